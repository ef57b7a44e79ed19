// Rows of nonzero weight, shared by the ops that skip the book's padded
// prediction slots.
#pragma once
#include <cstdint>
#include <vector>

inline std::vector<int64_t> weighted_rows(const float* w, int64_t R) {
  std::vector<int64_t> rows;
  rows.reserve(R);
  for (int64_t r = 0; r < R; ++r)
    if (w[r] != 0.f) rows.push_back(r);
  return rows;
}
