using System.CommandLine;
using QwQ.Cuda.Cli;
using QwQ.Cuda.Engine;

namespace QwQ.Cuda.Tests.Cli;

/// <summary>
/// <c>--rope-scaling adaptive|static|off</c> and <c>--rope-switch N</c>: bound on the commands that load a model, checked
/// against the model at load, and adaptive refused by the GPU engine with one clean message (no GPU needed: the check
/// runs before CUDA is touched).
/// </summary>
public class RopeScalingCliTests
{
    private static void AssertOneCleanError(CliTests.Result r, params string[] fragments)
    {
        Assert.That(r.ExitCode, Is.EqualTo(ExitCodes.Usage), r.Err);
        var lines = r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.That(lines.Count(l => l.StartsWith("error:", StringComparison.Ordinal)), Is.EqualTo(1), r.Err);
        foreach (var f in fragments) Assert.That(r.Err, Does.Contain(f));
        Assert.That(r.Err, Does.Not.Contain("   at "), "no stack trace without --verbose");
        Assert.That(r.Out, Is.Empty, "nothing generated");
    }

    [Test]
    public void TheFlagsBindToTheEngineOptions()
    {
        var flags = new ModelFlags();
        var (opts, cmd) = (flags.Options, flags.Command);
        var none = opts.Bind(cmd.Parse(["--synthetic", "qwq-32b-yarn"])).Engine;
        Assert.That((none.RopeScaling, none.RopeSwitchPosition), Is.EqualTo(((RopeScalingMode?)null, (int?)null)), "not given: the engine's default (adaptive where the config has YaRN)");
        foreach (var (text, mode) in new[] { ("adaptive", RopeScalingMode.Adaptive), ("static", RopeScalingMode.Static), ("off", RopeScalingMode.Off) })
            Assert.That(opts.Bind(cmd.Parse(["--synthetic", "qwq-32b-yarn", "--rope-scaling", text])).Engine.RopeScaling, Is.EqualTo(mode), text);
        Assert.That(none.RopeSwitch, Is.EqualTo(RopeSwitchMethod.Recompute));
        Assert.That(opts.Bind(cmd.Parse(["--synthetic", "qwq-32b-yarn", "--rope-switch-method", "rerotate"])).Engine.RopeSwitch, Is.EqualTo(RopeSwitchMethod.Rerotate));
        Assert.That(cmd.Parse(["--synthetic", "qwq-32b-yarn", "--rope-switch-method", "rotate"]).Errors, Is.Not.Empty);
        var adaptive = opts.Bind(cmd.Parse(["--synthetic", "qwq-32b-yarn", "--rope-scaling", "adaptive", "--rope-switch", "8192"])).Engine;
        Assert.That((adaptive.RopeScaling, adaptive.RopeSwitchPosition), Is.EqualTo(((RopeScalingMode?)RopeScalingMode.Adaptive, (int?)8192)));

        Assert.That(cmd.Parse(["--synthetic", "qwq-32b-yarn", "--rope-scaling", "dynamic"]).Errors, Is.Not.Empty);
        Assert.That(cmd.Parse(["--synthetic", "qwq-32b-yarn", "--rope-switch", "8k"]).Errors.Select(e => e.Message),
            Has.Some.Contain("--rope-switch expects a whole number"));
    }

    [Test]
    public void EveryCommandThatTakesEngineOptionsTakesThem()
    {
        var root = CliApp.CreateRootCommand(new CliHost(TextWriter.Null, TextWriter.Null));
        foreach (var name in new[] { "generate", "chat", "serve", "eval" })
        {
            var options = root.Subcommands.Single(c => c.Name == name).Options.Select(o => o.Name).ToList();
            Assert.That(options, Does.Contain("--rope-scaling").And.Contain("--rope-switch").And.Contain("--rope-switch-method"), name);
        }
    }

    [Test]
    public async Task AdaptiveNeedsAYarnConfig()
    {
        var r = await CliTests.Qwq("generate", "--model", TinyChatFixtureTests.Dir, "--backend", "cpu", "--rope-scaling", "adaptive",
            "--prompt", "Hi", "--max-tokens", "1");
        AssertOneCleanError(r, "no YaRN rope_scaling", "qwq-32b-yarn");
    }

    [Test]
    public async Task TheSwitchNeedsAdaptive()
    {
        var r = await CliTests.Qwq("generate", "--model", TinyChatFixtureTests.Dir, "--backend", "cpu", "--rope-scaling", "static",
            "--rope-switch", "8", "--prompt", "Hi", "--max-tokens", "1");
        AssertOneCleanError(r, "--rope-switch 8 applies only to --rope-scaling adaptive", "the mode is static");
    }

    [Test]
    public async Task TheSwitchNeedsAYarnConfig()
    {
        // the default mode is adaptive only where there is YaRN to switch to; here every sequence is plain
        var r = await CliTests.Qwq("generate", "--model", TinyChatFixtureTests.Dir, "--backend", "cpu", "--rope-switch", "8",
            "--prompt", "Hi", "--max-tokens", "1");
        AssertOneCleanError(r, "--rope-switch 8", "has no YaRN rope_scaling", "drop --rope-switch");
    }

    [Test]
    public async Task OffRunsOnAModelWithoutYarn()
    {
        var r = await CliTests.Qwq("generate", "--model", TinyChatFixtureTests.Dir, "--backend", "cpu", "--rope-scaling", "off",
            "--prompt", "Hi", "--max-tokens", "2", "--temperature", "0");
        Assert.That(r.ExitCode, Is.Zero, r.Err);
    }
}
