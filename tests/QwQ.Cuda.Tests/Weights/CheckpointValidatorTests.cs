using QwQ.Cuda.Config;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Weights;
using static QwQ.Cuda.Tests.Weights.SafetensorsTestFiles;

namespace QwQ.Cuda.Tests.Weights;

public class CheckpointValidatorTests
{
    // A deliberately tiny Qwen2: hidden 8, 2 heads of 4, 1 KV head, 1 layer, vocab 5.
    private static ModelConfig Tiny(bool tied = false) => ModelPresets.Get("qwq-32b") with
    {
        HiddenSize = 8, IntermediateSize = 6, NumHiddenLayers = 1, NumAttentionHeads = 2, NumKeyValueHeads = 1,
        HeadDim = 4, VocabSize = 5, TieWordEmbeddings = tied, TorchDtype = "float32",
    };

    private TempDir _dir = null!;
    [SetUp] public void SetUp() => _dir = new TempDir();
    [TearDown] public void TearDown() => _dir.Dispose();

    /// <summary>Writes every expected tensor (zeros), letting a test drop or reshape some, or add <paramref name="extra"/>.</summary>
    private void WriteCheckpoint(ModelConfig c, Func<ExpectedTensor, ExpectedTensor?>? edit = null, string dtype = "F32",
                                 params Entry[] extra)
    {
        var entries = new List<Entry>(extra);
        foreach (var t in TensorNames.Expected(c))
        {
            var e = edit is null ? t : edit(t);
            if (e is null) continue;
            long n = e.Shape.Aggregate(1L, (a, b) => a * b);
            entries.Add(new Entry(e.Name, dtype, e.Shape, new byte[n * (dtype == "F32" ? 4 : 2)]));
        }
        Write(_dir.File("model.safetensors"), entries);
    }

    private WeightsException ValidateFails(ModelConfig c)
    {
        using var ck = SafetensorsCheckpoint.Open(_dir.Path);
        return Assert.Throws<WeightsException>(() => CheckpointValidator.Validate(ck, c))!;
    }

    [Test]
    public void ExpectedNamesAndShapes()
    {
        var expected = TensorNames.Expected(Tiny()).ToDictionary(e => e.Name, e => e.Shape);
        Assert.That(expected, Has.Count.EqualTo(1 + 12 + 2));
        Assert.That(expected["model.embed_tokens.weight"], Is.EqualTo(new long[] { 5, 8 }));
        Assert.That(expected["model.layers.0.self_attn.q_proj.weight"], Is.EqualTo(new long[] { 8, 8 }));
        Assert.That(expected["model.layers.0.self_attn.k_proj.bias"], Is.EqualTo(new long[] { 4 }));
        Assert.That(expected["model.layers.0.self_attn.o_proj.weight"], Is.EqualTo(new long[] { 8, 8 }));
        Assert.That(expected["model.layers.0.mlp.down_proj.weight"], Is.EqualTo(new long[] { 8, 6 }));
        Assert.That(expected["lm_head.weight"], Is.EqualTo(new long[] { 5, 8 }));
        Assert.That(TensorNames.Expected(Tiny(tied: true)).Select(e => e.Name), Does.Not.Contain("lm_head.weight"));
        Assert.That(TensorNames.Expected(ModelPresets.Get("qwq-32b")), Has.Count.EqualTo(1 + 64 * 12 + 2));
    }

    [Test]
    public void CompleteCheckpointPasses([Values("F32", "BF16", "F16")] string dtype)
    {
        WriteCheckpoint(Tiny(), dtype: dtype);
        using var ck = SafetensorsCheckpoint.Open(_dir.Path);
        Assert.DoesNotThrow(() => CheckpointValidator.Validate(ck, Tiny()));
    }

    [Test]
    public void TiedCheckpointNeedsNoLmHead()
    {
        WriteCheckpoint(Tiny(tied: true));
        using var ck = SafetensorsCheckpoint.Open(_dir.Path);
        Assert.DoesNotThrow(() => CheckpointValidator.Validate(ck, Tiny(tied: true)));
    }

    [Test]
    public void MissingTensorIsNamed()
    {
        WriteCheckpoint(Tiny(), t => t.Name == "model.layers.0.self_attn.v_proj.bias" ? null : t);
        var e = ValidateFails(Tiny());
        Assert.That(e.Message, Does.Contain("'model.layers.0.self_attn.v_proj.bias' is missing").And.Contain("[4]"));
    }

    [Test]
    public void MissingLmHeadExplainsTying()
    {
        WriteCheckpoint(Tiny(), t => t.Name == "lm_head.weight" ? null : t);
        Assert.That(ValidateFails(Tiny()).Message, Does.Contain("'lm_head.weight'").And.Contain("tie_word_embeddings"));
    }

    [Test]
    public void WrongShapeNamesTensorAndFile()
    {
        WriteCheckpoint(Tiny(), t => t.Name == "model.layers.0.mlp.up_proj.weight" ? t with { Shape = [8, 6] } : t);
        var e = ValidateFails(Tiny());
        Assert.That(e.Message, Does.Contain("'model.layers.0.mlp.up_proj.weight'").And.Contain(_dir.File("model.safetensors"))
                                   .And.Contain("[8, 6]").And.Contain("expected [6, 8]"));
    }

    [Test]
    public void SeveralProblemsAreListedTogether()
    {
        WriteCheckpoint(Tiny(), t => t.Name.Contains("norm") ? null : t);
        var e = ValidateFails(Tiny());
        Assert.That(e.Message, Does.Contain("3 problems").And.Contain("input_layernorm").And.Contain("model.norm.weight"));
    }

    [Test]
    public void LayerTheConfigLacksIsRejected()
    {
        WriteCheckpoint(Tiny() with { NumHiddenLayers = 2 });
        var e = ValidateFails(Tiny());
        Assert.That(e.Message, Does.Contain("config.json and the checkpoint disagree").And.Contain("12 problems")
                                   .And.Contain("'model.layers.1.self_attn.q_proj.weight'").And.Contain(_dir.File("model.safetensors"))
                                   .And.Contain("num_hidden_layers = 1"));
    }

    [Test]
    public void LmHeadWithTiedEmbeddingsIsRejected()
    {
        WriteCheckpoint(Tiny());
        var e = ValidateFails(Tiny(tied: true));
        Assert.That(e.Message, Does.Contain("config.json and the checkpoint disagree").And.Contain("'lm_head.weight'")
                                   .And.Contain("tie_word_embeddings = true"));
    }

    [Test]
    public void UnknownTensorIsRejected()
    {
        WriteCheckpoint(Tiny(), extra: F32("model.layers.0.self_attn.q_norm.weight", [4], 1, 1, 1, 1));
        Assert.That(ValidateFails(Tiny()).Message, Does.Contain("'model.layers.0.self_attn.q_norm.weight'").And.Contain("not part of the model"));
    }

    /// <summary>Old exports carry RoPE's inv_freq per layer; it is derived from the config, so it may be there.</summary>
    [Test]
    public void RotaryInvFreqIsIgnorable()
    {
        WriteCheckpoint(Tiny(), extra: F32(TensorNames.RotaryInvFreq(0), [2], 1, 0.01f));
        using var ck = SafetensorsCheckpoint.Open(_dir.Path);
        Assert.DoesNotThrow(() => CheckpointValidator.Validate(ck, Tiny()));
    }

    [Test]
    public void RotaryInvFreqOfALayerTheConfigLacksIsRejected()
    {
        WriteCheckpoint(Tiny(), extra: F32(TensorNames.RotaryInvFreq(1), [2], 1, 0.01f));
        Assert.That(ValidateFails(Tiny()).Message, Does.Contain("'model.layers.1.self_attn.rotary_emb.inv_freq'").And.Contain("num_hidden_layers = 1"));
    }

    [Test]
    public void FixtureWithAOneLayerConfigDoesNotLoad()
    {
        var e = Assert.Throws<WeightsException>(() => TinyGqaFixture.Load(TinyGqaFixture.Dir, TinyGqaFixture.Config with { NumHiddenLayers = 1 }))!;
        Assert.That(e.Message, Does.Contain("'model.layers.1.mlp.down_proj.weight'").And.Contain("num_hidden_layers = 1"));
    }
}
