// Entry point of the extension library: layer_norm.cc and cross_entropy.cc
// register the ops.
#include "mxnet/lib_api.h"

using namespace mxnet::ext;

MXReturnValue initialize(int version) {
  return version >= 10700 ? MX_SUCCESS : MX_FAIL;
}
