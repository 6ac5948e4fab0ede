// tokenizer.json: encodings and decodings must equal those of Hugging Face `tokenizers`
// exactly (goldens from scripts/make_tokenizer_fixtures.py); malformed files and input
// give clear errors.
#include <nlohmann/json.hpp>

#include <fstream>
#include <functional>

#include "subq/io.h"
#include "tests/io/files.h"
#include "tests/support/random.h"

namespace subq::test {
namespace {

const std::string kData = std::string(SUBQ_TEST_DATA) + "/io/";

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

const nlohmann::json& golden() {
  static const nlohmann::json g = read_json(kData + "tokenizer_golden.json");
  return g;
}

std::string escaped(const std::string& s) { return nlohmann::json(s).dump(); }

void expect_matches_golden(const std::string& file, const std::string& key) {
  const Tokenizer tok = Tokenizer::load(kData + file);
  const auto& g = golden().at(key);
  ASSERT_GE(g.at("encodings").size(), 40u);
  for (const auto& e : g.at("encodings")) {
    const std::string text = e.at("text");
    EXPECT_EQ(tok.encode(text, false), e.at("ids").get<std::vector<int32_t>>()) << key << " text " << escaped(text);
    EXPECT_EQ(tok.encode(text, true), e.at("ids_with_special").get<std::vector<int32_t>>())
        << key << " (special) text " << escaped(text);
  }
  for (const auto& d : g.at("decodings")) {
    const auto ids = d.at("ids").get<std::vector<int32_t>>();
    EXPECT_EQ(tok.decode(ids, d.at("skip_special").get<bool>()), d.at("text").get<std::string>())
        << key << " decode " << d.at("ids").dump();
  }
}

TEST(Tokenizer, GptNeoxMatchesHuggingFace) { expect_matches_golden("tokenizer_neox.json", "neox"); }
TEST(Tokenizer, GptNeoxPrefixSpaceMatchesHuggingFace) {
  expect_matches_golden("tokenizer_neox_prefix.json", "neox_prefix");
}
TEST(Tokenizer, Llama3MatchesHuggingFace) { expect_matches_golden("tokenizer_llama3.json", "llama3"); }

// Pipeline options the two fixtures do not use (Split "Removed", String patterns, ByteLevel
// without its regex, nested normalizer Sequences, no post-processor), each checked on a
// copy of a fixture with one component replaced, as recorded by the fixture script.
TEST(Tokenizer, VariantsMatchHuggingFace) {
  const auto& variants = golden().at("variants");
  ASSERT_GE(variants.size(), 5u);
  for (const auto& [name, v] : variants.items()) {
    nlohmann::json doc = read_json(kData + v.at("base").get<std::string>());
    for (const auto& [component, value] : v.at("replace").items()) doc[component] = value;
    const Tokenizer tok = Tokenizer::parse(doc.dump(), name);
    for (const auto& e : v.at("encodings")) {
      const std::string text = e.at("text");
      EXPECT_EQ(tok.encode(text, true), e.at("ids").get<std::vector<int32_t>>()) << name << " text " << escaped(text);
    }
  }
}

// The published GPT-NeoX tokenizer.json has no "use_regex"; `tokenizers` defaults it to true.
TEST(Tokenizer, ByteLevelUseRegexDefaultsToTrue) {
  nlohmann::json doc = read_json(kData + "tokenizer_neox.json");
  doc["pre_tokenizer"].erase("use_regex");
  const Tokenizer tok = Tokenizer::parse(doc.dump(), "t.json");
  for (const auto& e : golden().at("neox").at("encodings"))
    EXPECT_EQ(tok.encode(e.at("text").get<std::string>(), false), e.at("ids").get<std::vector<int32_t>>());
  doc["pre_tokenizer"].erase("add_prefix_space");
  expect_error([&] { Tokenizer::parse(doc.dump(), "t.json"); }, {"t.json: pre_tokenizer: field 'add_prefix_space' missing"});
}

TEST(Tokenizer, VocabularyAccessors) {
  const Tokenizer tok = Tokenizer::load(kData + "tokenizer_llama3.json");
  const auto bos = tok.token_to_id("<|begin_of_text|>");
  ASSERT_TRUE(bos.has_value());
  EXPECT_TRUE(tok.is_special(*bos));
  EXPECT_EQ(tok.id_to_token(*bos), "<|begin_of_text|>");
  const auto space = tok.token_to_id("\xc4\xa0");  // "Ġ", the byte-level space
  ASSERT_TRUE(space.has_value());
  EXPECT_EQ(tok.token_bytes(*space), " ");
  EXPECT_FALSE(tok.is_special(*space));
  EXPECT_FALSE(tok.known(-1));
  EXPECT_FALSE(tok.known(tok.vocab_size()));
  EXPECT_EQ(tok.id_to_token(tok.vocab_size() + 5), "");
  // Ids without a token (e.g. a model's padded vocab rows) are skipped, as in `tokenizers`.
  const std::vector<int32_t> ids = {*space, tok.vocab_size() + 7, *space};
  EXPECT_EQ(tok.decode(ids), "  ");
}

// Feeding ids one by one must give the same text as decoding them at once, whatever the
// character boundaries; checked on every golden text and on random id sequences.
TEST(Tokenizer, StreamingDecodeEqualsFullDecode) {
  auto rng = rng_for_test();
  for (const char* file : {"tokenizer_neox.json", "tokenizer_llama3.json"}) {
    const Tokenizer tok = Tokenizer::load(kData + file);
    std::vector<std::vector<int32_t>> sequences;
    for (const auto& e : golden().at("llama3").at("encodings")) sequences.push_back(tok.encode(e.at("text").get<std::string>()));
    for (int r = 0; r < 200; ++r) {
      std::vector<int32_t> ids(1 + rng() % 12);
      for (auto& id : ids) id = static_cast<int32_t>(rng() % static_cast<uint64_t>(tok.vocab_size() + 3));
      sequences.push_back(ids);
    }
    for (const bool skip : {false, true})
      for (const auto& ids : sequences) {
        TokenDecoder stream(tok, skip);
        std::string text;
        for (const int32_t id : ids) text += stream.push(id);
        text += stream.finish();
        EXPECT_EQ(text, tok.decode(ids, skip)) << file;
      }
  }
}

TEST(Tokenizer, StreamingDecodeHoldsIncompleteCharacters) {
  const Tokenizer tok = Tokenizer::load(kData + "tokenizer_neox.json");
  // "東" is E6 9D B1: three single-byte tokens.
  std::vector<int32_t> ids;
  for (const unsigned char b : std::string("\xe6\x9d\xb1")) {
    int32_t id = -1;
    for (int32_t i = 0; i < tok.vocab_size(); ++i)
      if (tok.token_bytes(i) == std::string(1, static_cast<char>(b))) id = i;
    ASSERT_GE(id, 0);
    ids.push_back(id);
  }
  TokenDecoder stream(tok);
  EXPECT_EQ(stream.push(ids[0]), "");
  EXPECT_EQ(stream.push(ids[1]), "");
  EXPECT_EQ(stream.push(ids[2]), "\xe6\x9d\xb1");
  EXPECT_EQ(stream.push(ids[0]), "");
  EXPECT_EQ(stream.finish(), "\xef\xbf\xbd");  // an unfinished character becomes U+FFFD
}

TEST(Tokenizer, RejectsInvalidUtf8Input) {
  const Tokenizer tok = Tokenizer::load(kData + "tokenizer_llama3.json");
  for (const std::string& bad : {std::string("abc\xff"), std::string("\xc3"), std::string("a\xed\xa0\x80z"),
                                std::string("\xf0\x9f\x98"), std::string("x\xc0\xaf")})
    expect_error([&] { tok.encode(bad); }, {"tokenizer_llama3.json: ", "not valid UTF-8", "at offset"});
}

// Edits a copy of the Llama-3 fixture and expects loading it to fail with `message`.
void expect_load_error(const std::function<void(nlohmann::json&)>& edit, const std::vector<std::string>& message) {
  nlohmann::json doc = read_json(kData + "tokenizer_llama3.json");
  edit(doc);
  std::vector<std::string> want = message;
  want.insert(want.begin(), "t.json: ");
  expect_error([&] { Tokenizer::parse(doc.dump(), "t.json"); }, want);
}

TEST(Tokenizer, RejectsMalformedFiles) {
  using J = nlohmann::json;
  expect_error([] { Tokenizer::parse("{\"model\":", "t.json"); }, {"t.json: invalid JSON"});
  expect_error([] { Tokenizer::parse("[]", "t.json"); }, {"t.json: must be a JSON object"});
  expect_load_error([](J& d) { d.erase("model"); }, {"field 'model' missing"});
  expect_load_error([](J& d) { d["model"]["type"] = "Unigram"; }, {"'Unigram' is not supported"});
  expect_load_error([](J& d) { d["model"]["merges"].push_back({"\xc4\xa0", "zzq"}); }, {"uses token 'zzq'", "not in the vocab"});
  expect_load_error([](J& d) { d["model"]["merges"].push_back({"a", "a"}); }, {"makes token 'aa'"});
  expect_load_error([](J& d) { d["model"]["merges"].push_back("ab"); }, {"must be \"left right\""});
  expect_load_error([](J& d) { d["model"]["merges"].push_back(7); }, {"merge", "found 7"});
  expect_load_error([](J& d) { d["model"]["vocab"]["x"] = -1; }, {"vocab entry 'x'", "token id"});
  expect_load_error([](J& d) { d["model"]["vocab"]["x"] = "1"; }, {"vocab entry 'x'"});
  expect_load_error([](J& d) { d["model"]["vocab"]["zzqq"] = 1; }, {"share id 1"});
  expect_load_error([](J& d) { d["model"]["vocab"]["zzqq"] = 2000000000; }, {"token id 2000000000 is far beyond"});
  expect_load_error([](J& d) { d["model"]["byte_fallback"] = true; }, {"byte_fallback is not supported"});
  expect_load_error([](J& d) { d["model"]["dropout"] = 0.1; }, {"dropout is not supported"});
  expect_load_error([](J& d) { d["model"]["continuing_subword_prefix"] = "##"; }, {"continuing_subword_prefix"});
  expect_load_error([](J& d) { d["model"]["unk_token"] = "<unk>"; }, {"unk_token '<unk>' is not in the vocab"});
  expect_load_error([](J& d) { d["normalizer"] = {{"type", "NFKC"}}; }, {"normalizer 'NFKC' is not supported"});
  expect_load_error([](J& d) { d["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "Lowercase"}}}}}; },
                    {"normalizer 'Lowercase'"});
  expect_load_error([](J& d) { d["pre_tokenizer"] = nullptr; }, {"ByteLevel pre-tokenizer"});
  expect_load_error([](J& d) { d["pre_tokenizer"] = {{"type", "Whitespace"}}; }, {"pre-tokenizer 'Whitespace' is not supported"});
  expect_load_error([](J& d) { d["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed"; }, {"invalid regex"});
  expect_load_error([](J& d) { d["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "MergedWithNext"; },
                    {"'MergedWithNext' is not supported"});
  expect_load_error([](J& d) { d["pre_tokenizer"]["pretokenizers"].erase(1); }, {"must end with ByteLevel"});
  expect_load_error([](J& d) { d["decoder"] = {{"type", "WordPiece"}}; }, {"decoder must be ByteLevel, found WordPiece"});
  expect_load_error([](J& d) { d.erase("decoder"); }, {"decoder must be ByteLevel, found null"});
  expect_load_error([](J& d) { d["pre_tokenizer"]["pretokenizers"] = J::array(); }, {"pre_tokenizer has no steps"});
  expect_load_error(
      [](J& d) {
        J nested = d["pre_tokenizer"];
        for (int i = 0; i < 50; ++i) nested = {{"type", "Sequence"}, {"pretokenizers", {nested}}};
        d["pre_tokenizer"] = nested;
      },
      {"nested too deeply"});
  expect_load_error([](J& d) { d["post_processor"]["processors"][1]["single"][0] = std::string(1000, '['); },
                    {"template items must be", "\"[[[["});
  expect_load_error([](J& d) { d["post_processor"] = {{"type", "BertProcessing"}}; }, {"'BertProcessing' is not supported"});
  expect_load_error([](J& d) { d["post_processor"]["processors"][1]["special_tokens"] = J::object(); },
                    {"'<|begin_of_text|>' is not in special_tokens"});
  expect_load_error([](J& d) { d["added_tokens"][0]["lstrip"] = true; }, {"sets lstrip"});
  expect_load_error([](J& d) { d["added_tokens"][0]["content"] = ""; }, {"empty content"});
  expect_load_error([](J& d) { d["added_tokens"][0]["id"] = 5; }, {"has id 5 but the vocab gives it"});
  expect_load_error([](J& d) { d["added_tokens"].push_back(d["added_tokens"][0]); }, {"listed twice"});
}

// Overlapping added tokens: the leftmost match wins, and among those the longest.
TEST(Tokenizer, AddedTokensMatchLeftmostLongest) {
  nlohmann::json doc = read_json(kData + "tokenizer_llama3.json");
  const int32_t base = Tokenizer::parse(doc.dump(), "t.json").vocab_size();
  const std::vector<std::string> added = {"QZ", "QZJJ", "ZJJK", "JJ"};
  for (size_t i = 0; i < added.size(); ++i)
    doc["added_tokens"].push_back({{"id", base + static_cast<int32_t>(i)}, {"content", added[i]}, {"special", false},
                                   {"normalized", false}, {"lstrip", false}, {"rstrip", false}, {"single_word", false}});
  const Tokenizer tok = Tokenizer::parse(doc.dump(), "t.json");
  const std::vector<int32_t> d = Tokenizer::parse(read_json(kData + "tokenizer_llama3.json").dump(), "t.json").encode("K", false);
  std::vector<int32_t> want = {base + 1};  // "QZJJ", not "QZ" + "JJ" nor "Q" + "ZJJK"
  want.insert(want.end(), d.begin(), d.end());
  EXPECT_EQ(tok.encode("QZJJK", false), want);
  EXPECT_EQ(tok.encode("JJQZ", false), (std::vector<int32_t>{base + 3, base}));
  EXPECT_EQ(tok.decode(tok.encode("xQZJJKQZJJQZ", false)), "xQZJJKQZJJQZ");
}

TEST(Tokenizer, HostileRegexFailsCleanly) {
  nlohmann::json doc = read_json(kData + "tokenizer_llama3.json");
  // Catastrophic backtracking must hit PCRE2's limits and become an Error.
  doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(a+)+$";
  const Tokenizer tok = Tokenizer::parse(doc.dump(), "t.json");
  expect_error([&] { tok.encode(std::string(40, 'a') + "!"); }, {"t.json: ", "regex matching failed"});
  // Empty matches split the text between characters instead of looping.
  doc["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "x*";
  EXPECT_FALSE(Tokenizer::parse(doc.dump(), "t.json").encode("abxxc", false).empty());
}

// Long inputs: runs of one character class (the worst case for the split regexes'
// backtracking and for one long BPE word) and long mixed text must encode without
// hitting regex limits and decode back to the input (these fixtures cover all 256 bytes).
TEST(Tokenizer, LongInputsRoundTrip) {
  auto rng = rng_for_test();
  const std::vector<std::string> fragments = {" ", "\n", "\t", "word", "Über", "東京", "😀", "123", "'s", "!!", "\r\n"};
  std::string mixed;
  while (mixed.size() < 200000) mixed += fragments[rng() % fragments.size()];
  const size_t n = 300000;
  const std::vector<std::string> texts = {std::string(n, ' '), std::string(n, ' ') + "x", std::string(n, 'a'),
                                          std::string(n, '7'), std::string(n, '\n'), std::string(n, '.'), mixed};
  for (const char* file : {"tokenizer_neox.json", "tokenizer_llama3.json"}) {
    const Tokenizer tok = Tokenizer::load(kData + file);
    for (const std::string& text : texts) {
      const std::vector<int32_t> ids = tok.encode(text, false);
      EXPECT_EQ(tok.decode(ids), text) << file << " length " << text.size();
    }
  }
}

}  // namespace
}  // namespace subq::test
