// Weights prepared once (stacked, converted to bf16, packed or reordered)
// and reused while their sources are unchanged, so a request converts no
// weight. Unchanged means: the same arrays (address), at the same version
// (MXNet's MXTensor::verID, bumped by every write: load_parameters, set_data,
// an optimizer's update) and with the same sampled values (an array freed
// and another made at its address starts again at version 0: its values
// tell them apart). Kept per (kind, first source), least recently used out
// beyond a budget; held by shared_ptr, so an entry replaced while an op
// still runs on it lives until that op ends.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>
#include "mxnet/lib_api.h"

namespace prepared {

// What a prepared weight was made from: an input array of the op
struct Source {
  const float* data;
  int64_t size;
  size_t version;
  uint64_t sample;  // a few of its values, hashed
  explicit Source(const mxnet::ext::MXTensor& t);
  bool operator==(const Source& o) const {
    return data == o.data && size == o.size && version == o.version && sample == o.sample;
  }
};

typedef std::shared_ptr<char> Buffer;  // 64-byte aligned

// The buffer of `bytes` that `make` fills from `sources`, for a `kind` (what
// is made: layout, provider, sizes), made now or reused
Buffer get(const std::vector<Source>& sources, uint64_t kind, size_t bytes,
           const std::function<void(char*)>& make);

// Buffers made and reused so far in this process (tests: a request makes none)
struct Counts {
  uint64_t made, reused;
};
Counts counts();

}  // namespace prepared
