#!/usr/bin/env python3
"""Trains two small byte-level BPE tokenizers with Hugging Face `tokenizers` and records
golden encodings and decodings for the C++ tokenizer tests (tests/io/tokenizer_test.cpp).

  pip install tokenizers && python3 scripts/make_tokenizer_fixtures.py

Writes into tests/data/io/:
  tokenizer_neox.json    GPT-NeoX style (Mamba, Mamba-2): NFC normalizer, ByteLevel
                         pre-tokenizer with the GPT-2 regex, merges as "a b" strings (the
                         layout of the published GPT-NeoX file), normalized added tokens
                         for whitespace runs, <|endoftext|> special.
  tokenizer_neox_prefix.json   the same with add_prefix_space = true.
  tokenizer_llama3.json  Llama-3 style: no normalizer, Split with the Llama-3 regex then
                         ByteLevel(use_regex=false), ignore_merges, merges as ["a", "b"]
                         pairs, special tokens and a TemplateProcessing post-processor that
                         adds <|begin_of_text|>.
  tokenizer_golden.json  for each tokenizer file: encodings of tricky strings (with and
                         without special tokens) and decodings of id sequences, including
                         ones that cut multi-byte characters; and encodings by variants
                         of the files with one component replaced (VARIANTS).
Training is deterministic, so rerunning reproduces the files.
"""
import json
import os
import random
import sys

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "io")

LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 2024, and we've got 1,234,567 reasons.",
    "I'm sure you'll like it; they'd said so. DON'T SHOUT! She's here, isn't she?",
    "Café, naïve, façade, résumé, jalapeño, Übermensch, Ærøskøbing, Ångström, crème brûlée.",
    "Le cœur a ses raisons que la raison ne connaît point. ¿Dónde está la biblioteca?",
    "東京は日本の首都です。中文也很常见：你好，世界！한국어 문장도 있습니다.",
    "Русский текст: съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Ελληνικά: Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. العربية: مرحبا بالعالم. עברית: שלום",
    "Emoji: 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇩🇪🇯🇵 ❤️ ✨🚀 — done.",
    "Numbers: 3.14159 2.71828 1000000 007 42nd 1st 2nd 3rd 0x1F 1e-5 12345678901234567890.",
    "    indented code:\n\tdef f(x):\n\t\treturn x ** 2  # square\n\n\n",
    "Whitespace   runs\t\tand\r\nCRLF\r\n lines \n\n  end  ",
    "def main():\n    for i in range(10):\n        print(f\"{i:03d}\")\n",
    "<html><body class=\"x\">Hello &amp; welcome!</body></html> {\"key\": [1, 2, 3]}",
    "Mixed: abc123def 4567abc ãbc ÀÉÎÕÜ ß ﬁ ǅ ℌ ① ½ Ⅻ ٣ ४",
]
CORPUS = CORPUS * 20

NEOX_SPECIAL = ["<|endoftext|>", "<|padding|>"]
LLAMA3_SPECIAL = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eot_id|>", "<|reserved_special_token_0|>",
]

TEXTS = [
    "",
    " ",
    "   ",
    "\n",
    "\r\n\r\n",
    "\t \t",
    "Hello world",
    " Hello world",
    "Hello  world   again    and     more",
    "trailing spaces   ",
    "It's I'm you'll we've they'd she's",
    "IT'S I'M YOU'LL WE'VE THEY'D 'S 'T",
    "don't won't can't ain't",
    "it\u2019s it'\u017f IT'\u017f 'LL 'Ll 'lL",
    "Café naïve façade",
    "Cafe\u0301 nai\u0308ve",
    "\u1100\u1161\u11a8 (decomposed Hangul)",
    "東京は日本の首都です。",
    "你好，世界！",
    "한국어 문장",
    "Съешь же ещё",
    "😀😃 👍🏽 👨‍👩‍👧‍👦 🇩🇪",
    "❤️✨🚀",
    "1234567890",
    "3.14159 and 12345678901234567890",
    "a1b22c333d4444",
    "x = 12_345 + 0x1F",
    "\tdef f(x):\n\t\treturn x ** 2\n",
    "line one\r\nline two\r\n\r\nline four",
    "word\u00a0nbsp\u2003emspace\u3000ideographic",
    "next\u0085line and\u2028ls",
    "a\u200bb\u2029c\ufeffd\u1680e\u000bf\u000cg\u001ch\u00a0i\u2007j\u202fk\u205fl\u180em \u180e n",
    "<|endoftext|>",
    "before<|endoftext|>after",
    "a <|endoftext|> b<|padding|>c",
    "<|begin_of_text|>Hello<|eot_id|>",
    "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>",
    "<|begin_of_text|><|begin_of_text|>",
    "<|endoftext",
    "<|eot_id|",
    "The quick brown fox jumps over the lazy dog.",
    "The the THE tHe",
    "!!!??? ... ---- ==== ////",
    "¿Dónde está la biblioteca?",
    "Ξεσκεπάζω την ψυχοφθόρα",
    "مرحبا بالعالم",
    "ﬁ ǅ ℌ ① ½ Ⅻ ٣ ४",
    "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
    "        eight spaces then text",
    "a\u180eb",
    "\U0001F9D1\u200D\U0001F4BB coding",
    "<|endoftext|><|endoftext|>",
    "  <|endoftext|>  x",
    "<|padding|> <|eot_id|>\n",
    "\n\n\n",
    " \n ",
    "a  \n  b",
    "x\n\n  y\r\n\tz",
    "1 2 3 44 555 6666",
    "１２３ full width",
    "٣٤٥ and ४५",
    "A\u030a vs \u212b vs \u00c5",
    "\u0000\u0001\u007f control",
    "I'M HERE, YOU'RE NOT",
    "'s's's",
    "don''t",
    "ok!!!\n\n",
    "\u3000\u3000東京",
    "ǅemal ǈ ǋ",
    "end with emoji 😀",
    "😀",
]

# More strings, drawn reproducibly from fragments that stress the split regexes.
FRAGMENTS = [" ", "  ", "\n", "\r\n", "\t", "the", "The", "THE", "'s", "'LL", "don't", "123", "4567", "3.14",
             "é", "e\u0301", "東京", "😀", "👍🏽", "!?", "...", "<|endoftext|>", "<|eot_id|>", "<|begin_of_text|>",
             "naïve", "ß", "Ω", "x", "\u00a0", "-", "__init__", "(x)", "\"q\"", "١٢", "한"]


def generated_texts(n, seed=1234):
    rng = random.Random(seed)
    return ["".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 8))) for _ in range(n)]


TEXTS += generated_texts(80)


def bytelevel_alphabet():
    return pre_tokenizers.ByteLevel.alphabet()


def train_neox():
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=700, min_frequency=2, special_tokens=NEOX_SPECIAL,
                                  initial_alphabet=bytelevel_alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    # GPT-NeoX adds whitespace runs as normalized, non-special added tokens.
    tok.add_tokens([AddedToken("  ", normalized=True), AddedToken("    ", normalized=True),
                    AddedToken("        ", normalized=True)])
    return tok


def train_llama3():
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=800, min_frequency=2, special_tokens=LLAMA3_SPECIAL,
                                  initial_alphabet=bytelevel_alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    return tok


def with_string_merges(doc):
    doc["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in doc["model"]["merges"]]
    return doc


def save(name, doc):
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
    return path


def goldens(path):
    tok = Tokenizer.from_file(path)
    encodings = []
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        ids_special = tok.encode(text, add_special_tokens=True).ids
        encodings.append({"text": text, "ids": ids, "ids_with_special": ids_special})
    decodings = []
    for text in TEXTS[:40]:
        ids = tok.encode(text, add_special_tokens=True).ids
        for skip in (False, True):
            decodings.append({"ids": ids, "skip_special": skip, "text": tok.decode(ids, skip_special_tokens=skip)})
    # Sequences that cut multi-byte characters: single byte-level tokens of an emoji and
    # a CJK character, alone, reversed and truncated.
    vocab = tok.get_vocab()
    byte_ids = [vocab[c] for c in bytelevel_alphabet()]
    raw = [vocab[_byte_char(b)] for b in "😀東".encode("utf-8")]
    for ids in (raw, raw[:3], raw[1:], raw[::-1], raw[:2] + raw[4:], [raw[0]] * 3, byte_ids[:8]):
        decodings.append({"ids": ids, "skip_special": False, "text": tok.decode(ids, skip_special_tokens=False)})
    return {"encodings": encodings, "decodings": decodings}


def _byte_char(b):
    # GPT-2's byte -> printable character map (the ByteLevel alphabet).
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    if b in printable:
        return chr(b)
    return chr(256 + sorted(set(range(256)) - set(printable)).index(b))


# Variants of the fixtures with one top-level component replaced, to cover pipeline
# options the two tokenizers do not use: (base file, {component: replacement}).
VARIANTS = {
    "split_removed": ("tokenizer_llama3.json", {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\s+"}, "behavior": "Removed", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}}),
    "split_string": ("tokenizer_llama3.json", {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": "o"}, "behavior": "Isolated", "invert": False},
        {"type": "Split", "pattern": {"String": "."}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": False}]}}),
    "bytelevel_no_regex": ("tokenizer_neox.json", {"pre_tokenizer": {
        "type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}}),
    "nfc_sequence": ("tokenizer_llama3.json", {"normalizer": {"type": "Sequence", "normalizers": [
        {"type": "NFC"}, {"type": "Sequence", "normalizers": []}]}}),
    "no_post_processor": ("tokenizer_llama3.json", {"post_processor": None}),
}


def variant_goldens():
    out = {}
    for name, (base, replace) in VARIANTS.items():
        with open(os.path.join(OUT, base), encoding="utf-8") as f:
            doc = json.load(f)
        doc.update(replace)
        tok = Tokenizer.from_str(json.dumps(doc))
        texts = TEXTS[:60]
        out[name] = {"base": base, "replace": replace,
                     "encodings": [{"text": t, "ids": tok.encode(t, add_special_tokens=True).ids} for t in texts]}
    return out




def main():
    os.makedirs(OUT, exist_ok=True)
    neox = json.loads(train_neox().to_str())
    neox_path = save("tokenizer_neox.json", with_string_merges(neox))
    neox_prefix = json.loads(json.dumps(neox))
    neox_prefix["pre_tokenizer"]["add_prefix_space"] = True
    neox_prefix_path = save("tokenizer_neox_prefix.json", neox_prefix)
    llama = json.loads(train_llama3().to_str())
    if not isinstance(llama["model"]["merges"][0], list):
        sys.exit("expected the pair merges format from this tokenizers version")
    llama_path = save("tokenizer_llama3.json", llama)
    golden = {"tokenizers_version": __import__("tokenizers").__version__}
    for name, path in (("neox", neox_path), ("neox_prefix", neox_prefix_path), ("llama3", llama_path)):
        golden[name] = goldens(path)
    golden["variants"] = variant_goldens()
    with open(os.path.join(OUT, "tokenizer_golden.json"), "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=None, separators=(",", ":"))
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT) if n.startswith("tokenizer_"))
    print(f"wrote {OUT}: tokenizer fixtures {total} bytes")


if __name__ == "__main__":
    main()
