#!/usr/bin/env python3
"""Writes text_goldens.json: Hugging Face reference outputs for the QwQ tokenizer and chat template.

    python3 tests/goldens/make_text_goldens.py TOKENIZER_DIR OUTPUT_DIR

TOKENIZER_DIR holds tokenizer.json and tokenizer_config.json (QwQ-32B's). No network is used.
Inputs come from tests/fixtures/text/corpus.json (strings to encode) and
tests/fixtures/text/chat_cases.json (conversations to render). Copy the output to
tests/fixtures/text/text_goldens.json; the C# tests compare against it.

Schema:
  generator: str
  encode: [{text, ids, nfc, decoded, decoded_skip_special}]
  chat:   [{name, messages, tools, add_generation_prompt, rendered, rendered_ids}]
"""
import json
import os
import sys


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    tok_dir, out_dir = sys.argv[1], sys.argv[2]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    import tokenizers
    import transformers
    from transformers import AutoTokenizer

    here = os.path.dirname(os.path.abspath(__file__))
    fixtures = os.path.join(here, "..", "fixtures", "text")
    with open(os.path.join(fixtures, "corpus.json"), encoding="utf-8") as f:
        corpus = json.load(f)
    with open(os.path.join(fixtures, "chat_cases.json"), encoding="utf-8") as f:
        cases = json.load(f)

    tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    normalizer = tok.backend_tokenizer.normalizer

    encode = []
    for text in corpus:
        ids = tok.encode(text, add_special_tokens=False)
        encode.append({
            "text": text,
            "ids": ids,
            "nfc": normalizer.normalize_str(text) if normalizer is not None else text,
            "decoded": tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False),
            "decoded_skip_special": tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False),
        })

    chat = []
    for case in cases:
        kwargs = {}
        if case.get("tools") is not None:
            kwargs["tools"] = case["tools"]
        rendered = tok.apply_chat_template(
            case["messages"], tokenize=False, add_generation_prompt=case["add_generation_prompt"], **kwargs)
        chat.append({**case, "rendered": rendered,
                     "rendered_ids": tok.encode(rendered, add_special_tokens=False)})

    out = {
        "generator": f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}",
        "encode": encode,
        "chat": chat,
    }
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "text_goldens.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {path}: {len(encode)} encodings, {len(chat)} chat renderings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
