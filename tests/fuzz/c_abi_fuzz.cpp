// libFuzzer target: the C ABI (cubn/cubn.h, executor build) driven with arbitrary descriptors,
// sizes, epsilons, momenta, activations, rank counts, pointer offsets (so alignments and overlaps)
// and byte counts, every pointer into one guarded pool. A call cubn rejects must leave every byte
// of the pool as it was and say why; an accepted call may write only inside the pool (the pool is
// a heap block under AddressSanitizer) and must not crash or trip a sanitizer.
//
// Memory cubn cannot size-check (tensors and parameters have no byte counts in the API) is the
// harness's to provide, and so are contents cubn cannot check without synchronizing (a zero-filled
// workspace, the gathered records' counts): a tensor pointer is passed only where the
// descriptor's bytes fit between it and the pool's end (otherwise it is passed as null, which cubn
// must reject or, where optional, skip). Byte counts (workspace, reserve, records) are fuzzed but
// never above what the pool holds.
//
// Input: a byte stream read front to back (missing bytes read as zero): the call, the descriptor,
// one mode per pointer, byte counts, epsilon, momenta, activation, accumulate, ranks, and a
// variable-length batch's lengths (type, padding, pointer).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "cubn/cubn.h"

namespace {

constexpr std::size_t kPoolBytes = 1 << 16;

class Input {
 public:
  Input(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  template <class T>
  T read() {
    T v{};
    unsigned char bytes[sizeof(T)] = {};
    for (std::size_t i = 0; i < sizeof(T) && pos_ < size_; ++i) bytes[i] = data_[pos_++];
    std::memcpy(&v, bytes, sizeof(T));
    return v;
  }
  std::uint8_t byte() { return read<std::uint8_t>(); }

 private:
  const std::uint8_t* data_;
  std::size_t size_, pos_ = 0;
};

// A value from a table of the interesting ones, or raw bits.
double number(Input& in, const std::vector<double>& table) {
  const std::uint8_t m = in.byte();
  if (m < 200) return table[m % table.size()];
  return in.read<double>();
}

std::int64_t dim(Input& in) {
  const std::uint8_t m = in.byte();
  if (m < 240) return m % 9;  // 0..8: small shapes that run
  // around cubn's limits: 2^31 (grid and plane sizes), 2^57 (channels), 2^62 (bytes); odd ones
  // where a product with a vector width must not overflow
  static const std::int64_t edges[] = {-1,
                                       std::int64_t(1) << 31,
                                       std::int64_t(1) << 40,
                                       std::numeric_limits<std::int64_t>::max(),
                                       std::numeric_limits<std::int64_t>::min(),
                                       (std::int64_t(1) << 31) - 1,
                                       (std::int64_t(1) << 57) - 1,
                                       std::int64_t(1) << 57,
                                       (std::int64_t(1) << 61) + 1,
                                       (std::int64_t(1) << 62) - 1};
  if (m < 250) return edges[m % 10];
  return in.read<std::int64_t>();
}

// Bytes of the descriptor's tensor and of one parameter array (0 where it is not valid or
// overflows: such a descriptor's tensors get no memory).
void extents(const cubn_tensor_desc& d, std::size_t* tensor, std::size_t* param) {
  *tensor = *param = 0;
  if (d.rank < 2 || d.rank > 5 || d.dtype < 0 || d.dtype > 3) return;
  const std::size_t elem = d.dtype == CUBN_FLOAT64 ? 8 : d.dtype == CUBN_FLOAT32 ? 4 : 2;
  std::size_t n = elem;
  for (int i = 0; i < d.rank; ++i) {
    if (d.dims[i] < 0) return;
    if (d.dims[i] != 0 && n > kPoolBytes / static_cast<std::size_t>(d.dims[i])) {
      *tensor = kPoolBytes + 1;  // does not fit, whatever the offset
      break;
    }
    n *= static_cast<std::size_t>(d.dims[i]);
  }
  if (*tensor == 0) *tensor = n;
  if (d.dims[1] >= 0 && d.dims[1] <= static_cast<std::int64_t>(kPoolBytes))
    *param = static_cast<std::size_t>(d.dims[1]) * (d.dtype == CUBN_FLOAT64 ? 8 : 4);
  else
    *param = kPoolBytes + 1;
}

struct Pool {
  unsigned char* base;
  Pool() : base(static_cast<unsigned char*>(std::aligned_alloc(256, kPoolBytes))) {}
  // A pointer `extent` bytes long at a fuzzed offset, or null (mode 0, or where it would not fit).
  void* pointer(Input& in, std::size_t extent) {
    const std::uint8_t mode = in.byte();
    const std::size_t offset = in.read<std::uint16_t>() % kPoolBytes;
    if (mode == 0 || extent > kPoolBytes - offset) return nullptr;
    return base + offset;
  }
  // A byte count for `p`: the size cubn asked for, one less, or fuzzed; never past the pool.
  std::size_t bytes(Input& in, const void* p, std::size_t required) {
    const std::uint8_t mode = in.byte();
    std::size_t n = mode % 4 == 0   ? required
                    : mode % 4 == 1 ? (required > 0 ? required - 1 : 0)
                    : mode % 4 == 2 ? in.read<std::uint32_t>()
                                    : 0;
    const std::size_t room =
        p == nullptr
            ? kPoolBytes
            : kPoolBytes - static_cast<std::size_t>(static_cast<const unsigned char*>(p) - base);
    return n < room ? n : room;
  }
};

// Calls per status, printed at exit where CUBN_FUZZ_STATS is set: how many inputs get past the
// checks (accepted calls run the kernels on the executor).
struct Stats {
  long count[CUBN_STATUS_INTERNAL_ERROR + 1] = {};
  ~Stats() {
    if (std::getenv("CUBN_FUZZ_STATS") == nullptr) return;
    for (int s = 0; s <= CUBN_STATUS_INTERNAL_ERROR; ++s)
      if (count[s] != 0)
        std::fprintf(stderr, "c_abi_fuzz: %ld calls: %s\n", count[s],
                     cubn_status_string(static_cast<cubn_status>(s)));
  }
};
Stats status_counts;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "c_abi_fuzz: %s (last message: \"%s\")\n", what, cubn_last_error_message());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static Pool pool;
  static std::vector<unsigned char> before(kPoolBytes);
  Input in(data, size);
  const int call = in.byte() % 13;

  cubn_tensor_desc d{};
  const std::uint8_t t = in.byte(), o = in.byte();
  d.dtype = t < 200 ? t % 4 : in.read<std::int32_t>();
  d.order = o < 200 ? o % 2 : in.read<std::int32_t>();
  d.rank = in.byte() % 8;
  for (std::int64_t& v : d.dims) v = dim(in);
  std::size_t tensor = 0, param = 0;
  extents(d, &tensor, &param);

  // the sizes cubn asks for (0 where it refuses the descriptor)
  std::size_t fwd_ws = 0, bwd_ws = 0, stats = 0, grads = 0, reserve_need = 0;
  cubn_forward_training_workspace_size(&d, &fwd_ws);
  cubn_backward_workspace_size(&d, &bwd_ws);
  cubn_local_stats_bytes(&d, &stats);
  cubn_local_grad_sums_bytes(&d, &grads);

  void* x = pool.pointer(in, tensor);
  void* y = pool.pointer(in, tensor);
  void* dy = pool.pointer(in, tensor);
  void* dx = pool.pointer(in, tensor);
  void* residual = pool.pointer(in, tensor);
  void* dz = pool.pointer(in, tensor);
  void* params[8];
  for (void*& p : params) p = pool.pointer(in, param);
  const std::int32_t activation = static_cast<std::int8_t>(in.byte()) % 4;
  cubn_activation_reserve_size(&d, activation, &reserve_need);
  void* ws = pool.pointer(in, 0);
  const std::size_t ws_bytes = pool.bytes(in, ws, call == 4 || call == 5 ? bwd_ws : fwd_ws);
  void* reserve = pool.pointer(in, 0);
  const std::size_t reserve_bytes = pool.bytes(in, reserve, reserve_need);
  void* record = pool.pointer(in, 0);
  int ranks = static_cast<int>(in.byte() % 5) - 1;  // -1 to 3
  if (in.byte() == 255) ranks += 1 << 30;
  const std::size_t one_record = call >= 9 ? grads : stats;
  const std::size_t record_bytes =
      pool.bytes(in, record, one_record * static_cast<std::size_t>(ranks > 0 ? ranks : 1));
  const double epsilon = number(in, {1e-5, 1e-3, 0.0, -1e-9, NAN, INFINITY, 1e-300, 1.0});
  const double momentum_mean = number(in, {0.1, 0.0, 1.0, -0.1, 1.5, NAN, 1e-300});
  const double momentum_var = number(in, {0.1, 0.0, 1.0, -0.1, 1.5, NAN, 1e-300});
  const int accumulate = in.byte() & 1;
  // A variable-length batch's lengths, read last (inputs made before they were fuzzed read zeros:
  // none): N of them at a fuzzed offset, int32 or int64 or a bad type, a padding choice or a bad
  // one; their values are whatever the pool holds there, any 32 or 64 bits, which cubn clamps to
  // [0, L] as it reads them (so an accepted call must stay in bounds whatever they are).
  const std::size_t samples =
      d.rank >= 1 && d.dims[0] >= 0 && d.dims[0] <= static_cast<std::int64_t>(kPoolBytes / 8)
          ? static_cast<std::size_t>(d.dims[0])
          : kPoolBytes;
  const std::uint8_t lt = in.byte(), lp = in.byte();
  cubn_lengths lens{};
  lens.type = lt < 200 ? lt % 2 : in.read<std::int32_t>();
  lens.padding = lp < 200 ? lp % 2 : in.read<std::int32_t>();
  lens.ptr = pool.pointer(in, samples * 8);

  cubn_training_forward_args tf;
  cubn_training_forward_args_init(&tf);
  tf.scale = params[0];
  tf.offset = params[1];
  tf.epsilon = epsilon;
  tf.running_mean = params[2];
  tf.running_var = params[3];
  tf.momentum_mean = momentum_mean;
  tf.momentum_var = momentum_var;
  tf.saved_mean = params[4];
  tf.saved_invstd = params[5];
  tf.epilogue = {activation, residual, reserve, reserve_bytes};
  tf.lengths = lens;
  cubn_inference_forward_args inf;
  cubn_inference_forward_args_init(&inf);
  inf.scale = params[0];
  inf.offset = params[1];
  inf.running_mean = params[2];
  inf.running_var = params[3];
  inf.epsilon = epsilon;
  inf.epilogue = {activation, residual, reserve, reserve_bytes};
  inf.lengths = lens;
  const cubn_param_gradients g = {params[6], params[7], accumulate};
  cubn_training_backward_args tb;
  cubn_training_backward_args_init(&tb);
  tb.scale = params[0];
  tb.saved_mean = params[4];
  tb.saved_invstd = params[5];
  tb.grads = g;
  tb.epilogue = {activation, residual, reserve, reserve_bytes, dz};
  tb.lengths = lens;
  cubn_frozen_backward_args fb;
  cubn_frozen_backward_args_init(&fb);
  fb.scale = params[0];
  fb.offset = params[1];
  fb.running_mean = params[2];
  fb.running_var = params[3];
  fb.epsilon = epsilon;
  fb.grads = g;
  fb.epilogue = {activation, residual, reserve, reserve_bytes, dz};
  fb.lengths = lens;

  // CUBN_FUZZ_TRACE: the decoded call, to read a crash's input
  if (std::getenv("CUBN_FUZZ_TRACE") != nullptr) {
    auto at = [&](const void* p) {
      return p == nullptr ? -1L
                          : static_cast<long>(static_cast<const unsigned char*>(p) - pool.base);
    };
    std::fprintf(stderr, "call %d dtype %d order %d rank %d dims %lld %lld %lld %lld %lld\n", call,
                 d.dtype, d.order, d.rank, static_cast<long long>(d.dims[0]),
                 static_cast<long long>(d.dims[1]), static_cast<long long>(d.dims[2]),
                 static_cast<long long>(d.dims[3]), static_cast<long long>(d.dims[4]));
    std::fprintf(stderr, "x %ld y %ld dy %ld dx %ld residual %ld dz %ld (tensor %zu bytes)\n",
                 at(x), at(y), at(dy), at(dx), at(residual), at(dz), tensor);
    for (int i = 0; i < 8; ++i) std::fprintf(stderr, "param[%d] %ld ", i, at(params[i]));
    std::fprintf(stderr,
                 "(%zu bytes)\nws %ld (%zu bytes) reserve %ld (%zu) record %ld (%zu) ranks %d "
                 "activation %d\n",
                 param, at(ws), ws_bytes, at(reserve), reserve_bytes, at(record), record_bytes,
                 ranks, activation);
  }
  // the gathered records' contract: what the local phase wrote. Their counts (the one integer in
  // a record, which the merge adds) are kept in [0, 2^40); their values stay fuzzed.
  if ((call == 7 || call == 10) && record != nullptr && one_record >= 16) {
    for (std::size_t r = 0; (r + 1) * one_record <= record_bytes; ++r) {
      unsigned char* header = static_cast<unsigned char*>(record) + r * one_record;
      std::int64_t count = 0;
      std::memcpy(&count, header, sizeof count);
      count &= (std::int64_t{1} << 40) - 1;
      const std::int64_t zero = 0;
      std::memcpy(header, &count, sizeof count);
      std::memcpy(header + 8, &zero, sizeof zero);
    }
  }
  // the workspace's contract: zero-filled before its first use, left so by every call (the pool's
  // other calls may have written there: this input's workspace is fresh)
  if (ws != nullptr) std::memset(ws, 0, ws_bytes);
  std::memcpy(before.data(), pool.base, kPoolBytes);
  cubn_status s = CUBN_STATUS_SUCCESS;
  std::size_t query = 0;
  switch (call) {
    case 0: s = cubn_forward_training(&d, x, y, &tf, ws, ws_bytes, nullptr); break;
    case 1: s = cubn_forward_inference(&d, x, y, &inf, nullptr); break;
    case 2: s = cubn_forward_training(&d, x, y, nullptr, ws, ws_bytes, nullptr); break;
    case 3: s = cubn_forward_training(nullptr, x, y, &tf, ws, ws_bytes, nullptr); break;
    case 4: s = cubn_backward_training(&d, x, dy, dx, &tb, ws, ws_bytes, nullptr); break;
    case 5: s = cubn_backward_frozen(&d, x, dy, dx, &fb, ws, ws_bytes, nullptr); break;
    case 6:
      s = lens.ptr == nullptr
              ? cubn_forward_training_local(&d, x, record, record_bytes, ws, ws_bytes, nullptr)
              : cubn_forward_training_local_lengths(&d, x, &lens, record, record_bytes, ws,
                                                    ws_bytes, nullptr);
      break;
    case 7:
      s = cubn_forward_training_apply(&d, x, y, &tf, record, record_bytes, ranks, ws, ws_bytes,
                                      nullptr);
      break;
    case 8: s = cubn_activation_reserve_size(&d, activation, &query); break;
    case 9:
      s = cubn_backward_training_local(&d, x, dy, &tb, record, record_bytes, ws, ws_bytes, nullptr);
      break;
    case 10:
      s = cubn_backward_training_apply(&d, x, dy, dx, &tb, record, record_bytes, ranks, ws,
                                       ws_bytes, nullptr);
      break;
    case 11: s = cubn_local_grad_sums_bytes(&d, nullptr); break;
    default: s = cubn_forward_training_workspace_size(&d, &query); break;
  }
  if (s >= CUBN_STATUS_SUCCESS && s <= CUBN_STATUS_INTERNAL_ERROR) ++status_counts.count[s];
  if (s != CUBN_STATUS_SUCCESS) {
    if (s < CUBN_STATUS_INVALID_ARGUMENT || s > CUBN_STATUS_INTERNAL_ERROR)
      fail("a status outside cubn_status");
    if (s == CUBN_STATUS_INTERNAL_ERROR || s == CUBN_STATUS_KERNEL_FAULT)
      fail("an internal error or kernel fault: a bug, not a rejection");
    const char* message = cubn_last_error_message();
    if (message == nullptr || message[0] == '\0') fail("a rejection without a message");
    if (std::strstr(message, "-0.000000") != nullptr) fail("a number printed rounded away");
    if (std::memcmp(before.data(), pool.base, kPoolBytes) != 0)
      fail("a rejected call wrote to memory");
  }
  return 0;
}
