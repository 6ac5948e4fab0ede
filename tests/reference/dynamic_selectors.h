// Float64 definitions of the dynamic sparse-prefill selectors (MoBA, HiP, XAttention,
// FlexPrefill), written for reading, not speed: every score is a plain sum over the
// tokens it pools, XAttention's antidiagonals are summed element by element (no
// reshaped GEMM), and FlexPrefill's vertical-slash rows test every (query, kept
// diagonal) pair. Each returns the kept key blocks of every row (b, h, qb), at index
// (b * Hq + h) * nqb + qb, sorted, with the row's diagonal block.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <set>
#include <vector>

namespace subq::ref {

using SelectorRows = std::vector<std::vector<int32_t>>;

// q [B, Tq, Hq, Dh] and k [B, Tk, Hkv, Dh]; query i sits at position offset + i; blocks
// of `block` tokens for queries and keys alike (offset a multiple of block).
struct SelectorInput {
  const std::vector<double>& q;
  const std::vector<double>& k;
  int64_t B, Tq, Tk, Hq, Hkv, Dh, offset, block;

  int64_t nqb() const { return (Tq + block - 1) / block; }
  int64_t nkb() const { return (Tk + block - 1) / block; }
  int64_t first() const { return offset / block; }
  const double* query(int64_t b, int64_t i, int64_t h) const {
    return &q[static_cast<size_t>(((b * Tq + i) * Hq + h) * Dh)];
  }
  const double* key(int64_t b, int64_t j, int64_t h) const {  // h: the query head
    return &k[static_cast<size_t>(((b * Tk + j) * Hkv + h / (Hq / Hkv)) * Dh)];
  }
  double dot(const double* a, const double* c) const {
    double s = 0;
    for (int64_t x = 0; x < Dh; ++x) s += a[x] * c[x];
    return s;
  }
  std::vector<double> query_mean(int64_t b, int64_t h, int64_t qb) const {
    return mean(qb, Tq, [&](int64_t i) { return query(b, i, h); });
  }
  std::vector<double> key_mean(int64_t b, int64_t h, int64_t kb) const {
    return mean(kb, Tk, [&](int64_t j) { return key(b, j, h); });
  }
  template <class Row>
  std::vector<double> mean(int64_t blk, int64_t rows, Row row) const {
    std::vector<double> m(static_cast<size_t>(Dh), 0.0);
    const int64_t r0 = blk * block, r1 = std::min(rows, r0 + block);
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t x = 0; x < Dh; ++x) m[static_cast<size_t>(x)] += row(r)[x];
    for (double& v : m) v /= static_cast<double>(r1 - r0);
    return m;
  }
};

// Indices in decreasing order of value (ties: lower index first).
inline std::vector<int32_t> ranked(const std::vector<double>& v) {
  std::vector<int32_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t c) { return v[static_cast<size_t>(a)] > v[static_cast<size_t>(c)]; });
  return order;
}

// The fewest highest values whose sum reaches `mass` of the total (at least one).
inline std::vector<int32_t> kept_until_mass(const std::vector<double>& v, double mass) {
  const double total = std::accumulate(v.begin(), v.end(), 0.0);
  std::vector<int32_t> kept;
  double sum = 0;
  for (int32_t i : ranked(v)) {
    if (!kept.empty() && sum >= mass * total) break;
    kept.push_back(i);
    sum += v[static_cast<size_t>(i)];
  }
  return kept;
}

inline std::vector<double> softmax(std::vector<double> x) {
  const double mx = *std::max_element(x.begin(), x.end());
  double sum = 0;
  for (double& v : x) sum += (v = std::exp(v - mx));
  for (double& v : x) v /= sum;
  return x;
}

// rows with each row's diagonal added, sorted and unique.
inline SelectorRows with_diagonals(const SelectorInput& in, std::vector<std::set<int32_t>> rows) {
  SelectorRows out;
  for (size_t r = 0; r < rows.size(); ++r) {
    rows[r].insert(static_cast<int32_t>(in.first() + static_cast<int64_t>(r) % in.nqb()));
    out.emplace_back(rows[r].begin(), rows[r].end());
  }
  return out;
}

// Calls f(b, h, qb, row) for every row, row the set to fill.
template <class F>
SelectorRows for_each_row(const SelectorInput& in, F f) {
  std::vector<std::set<int32_t>> rows(static_cast<size_t>(in.B * in.Hq * in.nqb()));
  for (int64_t b = 0; b < in.B; ++b)
    for (int64_t h = 0; h < in.Hq; ++h)
      for (int64_t qb = 0; qb < in.nqb(); ++qb) f(b, h, qb, rows[static_cast<size_t>((b * in.Hq + h) * in.nqb() + qb)]);
  return with_diagonals(in, std::move(rows));
}

// MoBA: the top_k complete past blocks by mean query . mean key.
inline SelectorRows moba_rows(const SelectorInput& in, int64_t top_k) {
  return for_each_row(in, [&](int64_t b, int64_t h, int64_t qb, std::set<int32_t>& row) {
    const auto qm = in.query_mean(b, h, qb);
    std::vector<double> score;
    for (int64_t kb = 0; kb < std::min(in.first() + qb, in.nkb()); ++kb)
      score.push_back(in.dot(qm.data(), in.key_mean(b, h, kb).data()));
    const auto order = ranked(score);
    for (size_t i = 0; i < std::min(order.size(), static_cast<size_t>(top_k)); ++i) row.insert(order[i]);
  });
}

// HiP: the past blocks as one range, halved level by level; each level keeps the top_k
// halves by the mean key of their middle block ((lo + hi) / 2), single blocks scored by
// themselves, until no kept range has more than one block.
inline SelectorRows hip_rows(const SelectorInput& in, int64_t top_k) {
  return for_each_row(in, [&](int64_t b, int64_t h, int64_t qb, std::set<int32_t>& row) {
    const auto qm = in.query_mean(b, h, qb);
    const auto score = [&](int64_t kb) { return in.dot(qm.data(), in.key_mean(b, h, kb).data()); };
    std::vector<std::pair<int64_t, int64_t>> ranges;
    const int64_t past = std::min(in.first() + qb, in.nkb());
    if (past > 0) ranges.push_back({0, past});
    for (bool split = true; split;) {
      split = false;
      std::vector<std::pair<int64_t, int64_t>> halves;
      for (const auto& [lo, hi] : ranges) {
        if (hi - lo == 1) {
          halves.push_back({lo, hi});
          continue;
        }
        split = true;
        halves.push_back({lo, (lo + hi) / 2});
        halves.push_back({(lo + hi) / 2, hi});
      }
      std::vector<double> s;
      for (const auto& [lo, hi] : halves) s.push_back(score(hi - lo == 1 ? lo : (lo + hi) / 2));
      // Ties go to the range that starts lower.
      std::vector<int32_t> order(halves.size());
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](int32_t a, int32_t c) {
        const double sa = s[static_cast<size_t>(a)], sc = s[static_cast<size_t>(c)];
        return sa > sc || (sa == sc && halves[static_cast<size_t>(a)].first < halves[static_cast<size_t>(c)].first);
      });
      ranges.clear();
      for (size_t i = 0; i < std::min(order.size(), static_cast<size_t>(top_k)); ++i)
        ranges.push_back(halves[static_cast<size_t>(order[i])]);
    }
    for (const auto& [lo, hi] : ranges)
      for (int64_t kb = lo; kb < hi; ++kb) row.insert(static_cast<int32_t>(kb));
  });
}

// XAttention: query i's s x s tile against key column c (keys c*s .. c*s + s-1) scores
// its antidiagonal, sum over t of q[r*s + s-1-t] . k[c*s + t] for reshaped row r = i / s
// (absent tokens count zero); each reshaped row softmaxes scale * score / s over the
// columns it may see (c <= offset / s + r) and adds the probabilities to key block
// min(c * s / block, diagonal); the row's blocks are kept until `threshold` of the mass.
inline SelectorRows xattention_rows(const SelectorInput& in, double threshold, int64_t s, double scale) {
  const int64_t nr = (in.Tq + s - 1) / s, nc = (in.Tk + s - 1) / s, per_block = in.block / s;
  return for_each_row(in, [&](int64_t b, int64_t h, int64_t qb, std::set<int32_t>& row) {
    const int64_t diagonal = in.first() + qb;
    std::vector<double> mass(static_cast<size_t>(std::min(diagonal + 1, in.nkb())), 0.0);
    for (int64_t r = qb * per_block; r < std::min(nr, (qb + 1) * per_block); ++r) {
      std::vector<double> logits;
      for (int64_t c = 0; c < std::min(nc, in.offset / s + r + 1); ++c) {
        double score = 0;
        for (int64_t t = 0; t < s; ++t) {
          const int64_t i = r * s + s - 1 - t, j = c * s + t;
          if (i < in.Tq && j < in.Tk) score += in.dot(in.query(b, i, h), in.key(b, j, h));
        }
        logits.push_back(scale * score / static_cast<double>(s));
      }
      const auto p = softmax(logits);
      for (size_t c = 0; c < p.size(); ++c)
        mass[static_cast<size_t>(std::min(static_cast<int64_t>(c) * s / in.block, diagonal))] += p[c];
    }
    for (int32_t kb : kept_until_mass(mass, threshold)) row.insert(kb);
  });
}

// FlexPrefill: per head, the last query block's exact attention averaged over its rows,
// per key (vertical) and per distance from the row's own position (slash), and per key
// block; when its Jensen-Shannon distance (natural log) to the softmax of the last block's
// pooled scores (scale * mean query . mean key over the blocks up to the diagonal) is
// below tau, every row keeps its own pooled softmax until gamma; otherwise every row
// keeps the blocks holding a kept vertical j <= its last position or a position p - d >= 0
// for a kept slash d and a query position p of the row, verticals and slashes each kept
// until gamma.
inline SelectorRows flexprefill_rows(const SelectorInput& in, double gamma, double tau, double scale) {
  const int64_t nqb = in.nqb(), blk = in.block, last = nqb - 1;
  const int64_t length = in.offset + in.Tq;  // keys the last query block may see
  const auto pooled = [&](int64_t b, int64_t h, int64_t qb) {
    const auto qm = in.query_mean(b, h, qb);
    std::vector<double> s;
    for (int64_t kb = 0; kb <= in.first() + qb; ++kb) s.push_back(scale * in.dot(qm.data(), in.key_mean(b, h, kb).data()));
    return softmax(s);
  };
  std::vector<std::set<int32_t>> rows(static_cast<size_t>(in.B * in.Hq * nqb));
  for (int64_t b = 0; b < in.B; ++b)
    for (int64_t h = 0; h < in.Hq; ++h) {
      std::vector<double> vertical(static_cast<size_t>(length), 0.0), slash(vertical);
      std::vector<double> exact(static_cast<size_t>(in.first() + nqb), 0.0);
      const int64_t i0 = last * blk, n = in.Tq - i0;
      for (int64_t i = i0; i < in.Tq; ++i) {
        const int64_t p = in.offset + i;
        std::vector<double> logits;
        for (int64_t j = 0; j <= p; ++j) logits.push_back(scale * in.dot(in.query(b, i, h), in.key(b, j, h)));
        const auto a = softmax(logits);
        for (int64_t j = 0; j <= p; ++j) {
          vertical[static_cast<size_t>(j)] += a[static_cast<size_t>(j)] / static_cast<double>(n);
          slash[static_cast<size_t>(p - j)] += a[static_cast<size_t>(j)] / static_cast<double>(n);
          exact[static_cast<size_t>(j / blk)] += a[static_cast<size_t>(j)] / static_cast<double>(n);
        }
      }
      const auto estimate = pooled(b, h, last);
      double js = 0;
      for (size_t kb = 0; kb < exact.size(); ++kb) {
        const double p = exact[kb], q = estimate[kb], m = 0.5 * (p + q);
        if (p > 0) js += 0.5 * p * std::log(p / m);
        if (q > 0) js += 0.5 * q * std::log(q / m);
      }
      const bool query_aware = std::sqrt(std::max(js, 0.0)) < tau;
      const auto verticals = kept_until_mass(vertical, gamma), slashes = kept_until_mass(slash, gamma);
      for (int64_t qb = 0; qb < nqb; ++qb) {
        auto& row = rows[static_cast<size_t>((b * in.Hq + h) * nqb + qb)];
        if (query_aware) {
          for (int32_t kb : kept_until_mass(pooled(b, h, qb), gamma)) row.insert(kb);
          continue;
        }
        const int64_t p0 = in.offset + qb * blk, p1 = in.offset + std::min(in.Tq, (qb + 1) * blk) - 1;
        for (int32_t j : verticals)
          if (j <= p1) row.insert(static_cast<int32_t>(j / blk));
        for (int32_t d : slashes)
          for (int64_t p = p0; p <= p1; ++p)
            if (p - d >= 0) row.insert(static_cast<int32_t>((p - d) / blk));
      }
    }
  return with_diagonals(in, std::move(rows));
}

}  // namespace subq::ref
