#include "src/io/bpe.h"

#include <queue>

#include "src/io/utf8.h"
#include "subq/tensor.h"

namespace subq::io {

Bpe::Bpe(std::unordered_map<std::string, int32_t> vocab, const std::vector<std::pair<std::string, std::string>>& merges,
         bool ignore_merges, std::optional<std::string> unk_token, bool fuse_unk, const std::string& label)
    : vocab_(std::move(vocab)), ignore_merges_(ignore_merges), fuse_unk_(fuse_unk) {
  if (unk_token) {
    const auto it = vocab_.find(*unk_token);
    if (it == vocab_.end()) throw Error(label + ": unk_token '" + *unk_token + "' is not in the vocab");
    unk_id_ = it->second;
  }
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    const auto ia = vocab_.find(a), ib = vocab_.find(b), iab = vocab_.find(a + b);
    const std::string where = label + ": merge " + std::to_string(rank) + " ('" + a + "', '" + b + "')";
    if (ia == vocab_.end()) throw Error(where + " uses token '" + a + "', which is not in the vocab");
    if (ib == vocab_.end()) throw Error(where + " uses token '" + b + "', which is not in the vocab");
    if (iab == vocab_.end()) throw Error(where + " makes token '" + a + b + "', which is not in the vocab");
    // A repeated merge keeps its last rank, as in `tokenizers` (later map entries win).
    merges_[key(ia->second, ib->second)] = Merge{static_cast<uint32_t>(rank), iab->second};
  }
}

void Bpe::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    const auto it = vocab_.find(std::string(word));
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  struct Symbol {
    int32_t id;
    int prev, next;
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto add = [&](int32_t id) {
    const int n = static_cast<int>(symbols.size());
    if (n > 0) symbols.back().next = n;
    symbols.push_back(Symbol{id, n - 1, -1, true});
  };
  bool pending_unk = false;
  for (size_t i = 0; i < word.size();) {
    const size_t len = std::min(utf8_char_length(static_cast<unsigned char>(word[i])), word.size() - i);
    const auto it = vocab_.find(std::string(word.substr(i, len)));
    i += len;
    if (it != vocab_.end()) {
      if (pending_unk) add(*unk_id_);
      pending_unk = false;
      add(it->second);
    } else if (unk_id_) {
      // Characters outside the vocab become unk (consecutive ones fused if asked); without
      // an unk token they are dropped, as `tokenizers` does.
      if (pending_unk && !fuse_unk_) add(*unk_id_);
      pending_unk = true;
    }
  }
  if (pending_unk) add(*unk_id_);

  struct Candidate {
    uint32_t rank;
    int pos;
    int32_t new_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  auto push_pair = [&](int left) {
    const int right = symbols[static_cast<size_t>(left)].next;
    if (right < 0) return;
    const auto it = merges_.find(key(symbols[static_cast<size_t>(left)].id, symbols[static_cast<size_t>(right)].id));
    if (it != merges_.end()) queue.push(Candidate{it->second.rank, left, it->second.new_id});
  };
  for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i) push_pair(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[static_cast<size_t>(top.pos)];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[static_cast<size_t>(left.next)];
    // Entries go stale when a neighbour merged; the pair must still produce new_id.
    const auto it = merges_.find(key(left.id, right.id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[static_cast<size_t>(right.next)].prev = top.pos;
    if (left.prev >= 0) push_pair(left.prev);
    push_pair(top.pos);
  }
  for (const Symbol& s : symbols)
    if (s.alive) out.push_back(s.id);
}

}  // namespace subq::io

