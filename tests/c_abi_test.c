/* The C ABI (cubn/cubn.h) from a C99 program on the CPU executor: every call against a
 * double-precision reference computed here, the split phases against the single calls, and bad
 * arguments (status, message naming the argument, nothing written).
 *
 * Tolerances: fp32 results of O(1) values reduced over at most 36 elements carry a few float
 * roundings of the mean, variance and invstd (each relative 2^-24, amplified at most by |xhat| <= 6
 * here): 2e-5 absolute + relative is a bound with room; the fp64 runs use 1e-12. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cubn/cubn.h"

static int failures = 0;

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                              \
    }                                                                          \
  } while (0)

static void expect_status(cubn_status got, cubn_status want, const char* needle, int line) {
  if (got != want) {
    fprintf(stderr, "line %d: status %d (%s), expected %d (%s): %s\n", line, (int)got,
            cubn_status_string(got), (int)want, cubn_status_string(want),
            cubn_last_error_message());
    ++failures;
  } else if (needle != NULL && strstr(cubn_last_error_message(), needle) == NULL) {
    fprintf(stderr, "line %d: message \"%s\" does not contain \"%s\"\n", line,
            cubn_last_error_message(), needle);
    ++failures;
  }
}
#define EXPECT_OK(call) expect_status((call), CUBN_STATUS_SUCCESS, NULL, __LINE__)
#define EXPECT_ERROR(call, status, needle) expect_status((call), (status), (needle), __LINE__)

static void expect_near(double got, double want, double tol, const char* what, long i) {
  if (!(fabs(got - want) <= tol * (1.0 + fabs(want)))) {
    fprintf(stderr, "%s[%ld]: %.17g, expected %.17g\n", what, i, got, want);
    ++failures;
  }
}

enum { N = 3, C = 5, H = 2, W = 3, S = H * W, NUMEL = N * C * S };

/* The element (n, c, s) of a tensor in `order`. */
static long at(int order, int n, int c, int s) {
  return order == CUBN_CHANNELS_FIRST ? ((long)n * C + c) * S + s : ((long)n * S + s) * C + c;
}

static cubn_tensor_desc desc_of(int dtype, int order, int n) {
  cubn_tensor_desc d;
  memset(&d, 0, sizeof d);
  d.dtype = dtype;
  d.order = order;
  d.rank = 4;
  d.dims[0] = n;
  d.dims[1] = C;
  d.dims[2] = H;
  d.dims[3] = W;
  return d;
}

/* Per channel mean and biased variance of x (n, c, s) in `order`. */
static void moments(int order, const double* x, double* mean, double* var) {
  int c, n, s;
  for (c = 0; c < C; ++c) {
    double sum = 0, sq = 0;
    for (n = 0; n < N; ++n)
      for (s = 0; s < S; ++s) sum += x[at(order, n, c, s)];
    mean[c] = sum / (N * S);
    for (n = 0; n < N; ++n)
      for (s = 0; s < S; ++s) {
        const double d = x[at(order, n, c, s)] - mean[c];
        sq += d * d;
      }
    var[c] = sq / (N * S);
  }
}

static double value(long i, int salt) { return sin(0.37 * (double)i + salt) * 2.0 + 0.25 * salt; }

/* Forward training, inference, backward and frozen backward in fp32 for one memory order. */
static void fp32_calls(int order) {
  float x[NUMEL], y[NUMEL], dy[NUMEL], dx[NUMEL];
  double xd[NUMEL], dyd[NUMEL], mean[C], var[C];
  float scale[C], offset[C], rmean[C], rvar[C], smean[C], sinvstd[C], dscale[C], doffset[C];
  const cubn_tensor_desc d = desc_of(CUBN_FLOAT32, order, N);
  size_t ws_bytes = 0, bw_bytes = 0;
  void* ws;
  cubn_training_forward_args tf;
  cubn_inference_forward_args inf;
  cubn_training_backward_args tb;
  cubn_frozen_backward_args fb;
  long i;
  int c, n, s;

  for (i = 0; i < NUMEL; ++i) {
    x[i] = (float)value(i, 1);
    dy[i] = (float)value(i, 2);
    xd[i] = x[i];
    dyd[i] = dy[i];
  }
  for (c = 0; c < C; ++c) {
    scale[c] = 0.5f + 0.25f * (float)c;
    offset[c] = -0.125f * (float)c;
    rmean[c] = 0.5f;
    rvar[c] = 2.0f;
  }
  moments(order, xd, mean, var);

  EXPECT_OK(cubn_forward_training_workspace_size(&d, &ws_bytes));
  EXPECT_OK(cubn_backward_workspace_size(&d, &bw_bytes));
  if (bw_bytes > ws_bytes) ws_bytes = bw_bytes;
  ws = calloc(1, ws_bytes); /* zero-filled once; every call leaves it ready */

  cubn_training_forward_args_init(&tf);
  CHECK(tf.epsilon == 1e-5 && tf.momentum_mean == 0.1 && tf.momentum_var == 0.1);
  tf.scale = scale;
  tf.offset = offset;
  tf.running_mean = rmean;
  tf.running_var = rvar;
  tf.saved_mean = smean;
  tf.saved_invstd = sinvstd;
  EXPECT_OK(cubn_forward_training(&d, x, y, &tf, ws, ws_bytes, NULL));
  for (c = 0; c < C; ++c) {
    const double invstd = 1.0 / sqrt(var[c] + 1e-5);
    expect_near(smean[c], mean[c], 2e-5, "saved_mean", c);
    expect_near(sinvstd[c], invstd, 2e-5, "saved_invstd", c);
    expect_near(rmean[c], 0.9 * 0.5 + 0.1 * mean[c], 2e-5, "running_mean", c);
    expect_near(rvar[c], 0.9 * 2.0 + 0.1 * var[c] * (N * S) / (N * S - 1), 2e-5, "running_var", c);
    for (n = 0; n < N; ++n)
      for (s = 0; s < S; ++s) {
        const long k = at(order, n, c, s);
        expect_near(y[k], (xd[k] - mean[c]) * invstd * scale[c] + offset[c], 2e-5, "y", k);
      }
  }

  cubn_inference_forward_args_init(&inf);
  inf.scale = scale;
  inf.offset = offset;
  inf.running_mean = rmean;
  inf.running_var = rvar;
  EXPECT_OK(cubn_forward_inference(&d, x, y, &inf, NULL));
  for (i = 0; i < NUMEL; ++i) {
    c = order == CUBN_CHANNELS_FIRST ? (int)(i / S % C) : (int)(i % C);
    expect_near(y[i], (xd[i] - rmean[c]) / sqrt((double)rvar[c] + 1e-5) * scale[c] + offset[c],
                2e-5, "inference y", i);
  }

  cubn_training_backward_args_init(&tb);
  tb.scale = scale;
  tb.saved_mean = smean;
  tb.saved_invstd = sinvstd;
  tb.grads.dscale = dscale;
  tb.grads.doffset = doffset;
  EXPECT_OK(cubn_backward_training(&d, x, dy, dx, &tb, ws, ws_bytes, NULL));
  for (c = 0; c < C; ++c) {
    const double invstd = 1.0 / sqrt(var[c] + 1e-5);
    double sdy = 0, sdyx = 0;
    for (n = 0; n < N; ++n)
      for (s = 0; s < S; ++s) {
        const long k = at(order, n, c, s);
        sdy += dyd[k];
        sdyx += dyd[k] * (xd[k] - mean[c]) * invstd;
      }
    expect_near(doffset[c], sdy, 2e-5, "doffset", c);
    expect_near(dscale[c], sdyx, 2e-5, "dscale", c);
    for (n = 0; n < N; ++n)
      for (s = 0; s < S; ++s) {
        const long k = at(order, n, c, s);
        const double xhat = (xd[k] - mean[c]) * invstd;
        const double want = scale[c] * invstd * (dyd[k] - sdy / (N * S) - xhat * sdyx / (N * S));
        expect_near(dx[k], want, 2e-5, "dx", k);
      }
  }

  cubn_frozen_backward_args_init(&fb);
  fb.scale = scale;
  fb.running_mean = rmean;
  fb.running_var = rvar;
  fb.grads.dscale = dscale;
  fb.grads.doffset = doffset;
  EXPECT_OK(cubn_backward_frozen(&d, x, dy, dx, &fb, ws, ws_bytes, NULL));
  for (c = 0; c < C; ++c) {
    const double invstd = 1.0 / sqrt((double)rvar[c] + 1e-5);
    double sdy = 0, sdyx = 0;
    for (n = 0; n < N; ++n)
      for (s = 0; s < S; ++s) {
        const long k = at(order, n, c, s);
        sdy += dyd[k];
        sdyx += dyd[k] * (xd[k] - rmean[c]) * invstd;
        expect_near(dx[k], dyd[k] * scale[c] * invstd, 2e-5, "frozen dx", k);
      }
    expect_near(doffset[c], sdy, 2e-5, "frozen doffset", c);
    expect_near(dscale[c], sdyx, 2e-5, "frozen dscale", c);
  }
  free(ws);
}

/* fp64 (double parameters) training forward and backward with ReLU fused, then the split phases
 * over two ranks (sample 0, samples 1 and 2), each with its own reserve, against the single calls.
 */
static void fp64_and_split(void) {
  double x[NUMEL], y[NUMEL], y_split[NUMEL], dy[NUMEL], dx[NUMEL], dx_split[NUMEL];
  double mean[C], var[C], smean[C], sinvstd[C], smean2[2][C], sinvstd2[2][C];
  const int order = CUBN_CHANNELS_FIRST;
  const cubn_tensor_desc d = desc_of(CUBN_FLOAT64, order, N);
  cubn_tensor_desc rank_desc[2];
  size_t ws_bytes = 0, bw_bytes = 0, reserve_bytes = 0, stats_bytes = 0, grad_bytes = 0;
  size_t rank_reserve_bytes[2];
  unsigned char *ws, *records, *grad_records, *reserve, *rank_reserve[2];
  cubn_training_forward_args tf;
  cubn_training_backward_args tb;
  long i;
  int c, r;

  rank_desc[0] = desc_of(CUBN_FLOAT64, order, 1);
  rank_desc[1] = desc_of(CUBN_FLOAT64, order, 2);
  for (i = 0; i < NUMEL; ++i) {
    x[i] = value(i, 3);
    dy[i] = value(i, 4);
  }
  moments(order, x, mean, var);
  EXPECT_OK(cubn_forward_training_workspace_size(&d, &ws_bytes));
  EXPECT_OK(cubn_backward_workspace_size(&d, &bw_bytes));
  EXPECT_OK(cubn_activation_reserve_size(&d, CUBN_ACTIVATION_RELU, &reserve_bytes));
  EXPECT_OK(cubn_local_stats_bytes(&d, &stats_bytes));
  EXPECT_OK(cubn_local_grad_sums_bytes(&d, &grad_bytes));
  CHECK(stats_bytes == (16 + 16 * C + 15) / 16 * 16); /* header, C (mean, M2) doubles, to 16 */
  if (bw_bytes > ws_bytes) ws_bytes = bw_bytes;
  ws = calloc(1, ws_bytes);
  records = calloc(2, stats_bytes);
  grad_records = calloc(2, grad_bytes);
  reserve = calloc(1, reserve_bytes);

  cubn_training_forward_args_init(&tf);
  tf.saved_mean = smean;
  tf.saved_invstd = sinvstd;
  tf.epilogue.activation = CUBN_ACTIVATION_RELU;
  tf.epilogue.reserve = reserve;
  tf.epilogue.reserve_bytes = reserve_bytes;
  EXPECT_OK(cubn_forward_training(&d, x, y, &tf, ws, ws_bytes, NULL));
  for (i = 0; i < NUMEL; ++i) {
    const double want = (x[i] - mean[i / S % C]) / sqrt(var[i / S % C] + 1e-5);
    expect_near(y[i], want > 0 ? want : 0, 1e-12, "fp64 relu y", i);
  }
  cubn_training_backward_args_init(&tb);
  tb.saved_mean = smean;
  tb.saved_invstd = sinvstd;
  tb.epilogue.activation = CUBN_ACTIVATION_RELU;
  tb.epilogue.reserve = reserve;
  tb.epilogue.reserve_bytes = reserve_bytes;
  EXPECT_OK(cubn_backward_training(&d, x, dy, dx, &tb, ws, ws_bytes, NULL));

  /* channels-first: rank r's samples start at x + r * C * S */
  for (r = 0; r < 2; ++r) {
    EXPECT_OK(cubn_forward_training_local(&rank_desc[r], x + r * C * S, records + r * stats_bytes,
                                          stats_bytes, ws, ws_bytes, NULL));
    EXPECT_OK(
        cubn_activation_reserve_size(&rank_desc[r], CUBN_ACTIVATION_RELU, &rank_reserve_bytes[r]));
    rank_reserve[r] = calloc(1, rank_reserve_bytes[r]);
  }
  for (r = 0; r < 2; ++r) {
    tf.saved_mean = smean2[r];
    tf.saved_invstd = sinvstd2[r];
    tf.epilogue.reserve = rank_reserve[r];
    tf.epilogue.reserve_bytes = rank_reserve_bytes[r];
    EXPECT_OK(cubn_forward_training_apply(&rank_desc[r], x + r * C * S, y_split + r * C * S, &tf,
                                          records, 2 * stats_bytes, 2, ws, ws_bytes, NULL));
    for (c = 0; c < C; ++c) {
      expect_near(smean2[r][c], smean[c], 1e-12, "split saved_mean", c);
      expect_near(sinvstd2[r][c], sinvstd[c], 1e-12, "split saved_invstd", c);
    }
  }
  for (i = 0; i < NUMEL; ++i) expect_near(y_split[i], y[i], 1e-12, "split y", i);

  for (r = 0; r < 2; ++r) {
    tb.saved_mean = smean2[r];
    tb.saved_invstd = sinvstd2[r];
    tb.epilogue.reserve = rank_reserve[r];
    tb.epilogue.reserve_bytes = rank_reserve_bytes[r];
    EXPECT_OK(cubn_backward_training_local(&rank_desc[r], x + r * C * S, dy + r * C * S, &tb,
                                           grad_records + r * grad_bytes, grad_bytes, ws, ws_bytes,
                                           NULL));
  }
  for (r = 0; r < 2; ++r) {
    tb.saved_mean = smean2[r];
    tb.saved_invstd = sinvstd2[r];
    tb.epilogue.reserve = rank_reserve[r];
    tb.epilogue.reserve_bytes = rank_reserve_bytes[r];
    EXPECT_OK(cubn_backward_training_apply(&rank_desc[r], x + r * C * S, dy + r * C * S,
                                           dx_split + r * C * S, &tb, grad_records, 2 * grad_bytes,
                                           2, ws, ws_bytes, NULL));
    free(rank_reserve[r]);
  }
  for (i = 0; i < NUMEL; ++i) expect_near(dx_split[i], dx[i], 1e-12, "split dx", i);
  free(ws);
  free(records);
  free(grad_records);
  free(reserve);
}

/* Bad arguments: the status, a message naming the argument, and y left as it was. */
static void errors(void) {
  float x[NUMEL + 1], y[NUMEL], y_before[NUMEL];
  cubn_tensor_desc d = desc_of(CUBN_FLOAT32, CUBN_CHANNELS_FIRST, N);
  size_t ws_bytes = 0, bytes = 0;
  void* ws;
  cubn_training_forward_args tf;
  cubn_inference_forward_args inf;
  long i;

  for (i = 0; i < NUMEL + 1; ++i) x[i] = (float)value(i, 5);
  for (i = 0; i < NUMEL; ++i) y[i] = -777.0f;
  memcpy(y_before, y, sizeof y);
  EXPECT_OK(cubn_forward_training_workspace_size(&d, &ws_bytes));
  ws = calloc(1, ws_bytes);
  cubn_training_forward_args_init(&tf);

  tf.epsilon = -1e-9;
  EXPECT_ERROR(cubn_forward_training(&d, x, y, &tf, ws, ws_bytes, NULL),
               CUBN_STATUS_INVALID_ARGUMENT, "epsilon is -1e-09");
  tf.epsilon = 1e-5;
  tf.momentum_var = 2.5;
  EXPECT_ERROR(cubn_forward_training(&d, x, y, &tf, ws, ws_bytes, NULL),
               CUBN_STATUS_INVALID_ARGUMENT, "momentum.var is 2.5");
  tf.momentum_var = 0.1;
  EXPECT_ERROR(cubn_forward_training(NULL, x, y, &tf, ws, ws_bytes, NULL),
               CUBN_STATUS_INVALID_ARGUMENT, "x_desc is null");
  EXPECT_ERROR(cubn_forward_training(&d, x, y, NULL, ws, ws_bytes, NULL),
               CUBN_STATUS_INVALID_ARGUMENT, "args is null");
  EXPECT_ERROR(cubn_forward_training(&d, x, y, &tf, ws, ws_bytes - 1, NULL),
               CUBN_STATUS_WORKSPACE_TOO_SMALL, "workspace.bytes");
  EXPECT_ERROR(cubn_forward_training(&d, (const char*)x + 2, y, &tf, ws, ws_bytes, NULL),
               CUBN_STATUS_MISALIGNED_OPERAND, "x is not aligned");
  d.dtype = 7;
  EXPECT_ERROR(cubn_forward_training(&d, x, y, &tf, ws, ws_bytes, NULL),
               CUBN_STATUS_INVALID_DATA_TYPE, "x_desc.dtype");
  d.dtype = CUBN_FLOAT32;
  d.order = -3;
  EXPECT_ERROR(cubn_forward_training(&d, x, y, &tf, ws, ws_bytes, NULL), CUBN_STATUS_INVALID_LAYOUT,
               "x_desc.order");
  d.order = CUBN_CHANNELS_FIRST;
  d.rank = 6;
  EXPECT_ERROR(cubn_backward_workspace_size(&d, &bytes), CUBN_STATUS_INVALID_LAYOUT, "rank 6");
  d.rank = 4;
  d.dims[1] = 0;
  EXPECT_ERROR(cubn_forward_training_workspace_size(&d, &bytes), CUBN_STATUS_INVALID_ARGUMENT,
               "dims[1] (C) is 0");
  d.dims[1] = C;
  EXPECT_ERROR(cubn_forward_training_workspace_size(&d, NULL), CUBN_STATUS_INVALID_ARGUMENT,
               "bytes is null");
  EXPECT_ERROR(cubn_activation_reserve_size(&d, 9, &bytes), CUBN_STATUS_INVALID_ARGUMENT,
               "activation");
  cubn_inference_forward_args_init(&inf);
  EXPECT_ERROR(cubn_forward_inference(&d, x, y, &inf, NULL), CUBN_STATUS_INVALID_ARGUMENT,
               "running");
  CHECK(memcmp(y, y_before, sizeof y) == 0);
  CHECK(strcmp(cubn_status_string(CUBN_STATUS_WORKSPACE_TOO_SMALL), "workspace too small") == 0);
  CHECK(strcmp(cubn_status_string(CUBN_STATUS_INTERNAL_ERROR), "internal error") == 0);
  free(ws);
}

/* A variable-length batch (cubn_lengths) in fp32, time along W: the saved mean and variance are
 * those of the valid positions (w < lengths[n]; padded x is NaN and must not reach them), padded y
 * is 0, and a bad length type is refused naming it. */
static void lengths(int order) {
  float x[NUMEL], y[NUMEL], smean[C], sinvstd[C], split_mean[C], split_invstd[C], split_y[NUMEL];
  cubn_training_forward_args split;
  size_t record_bytes = 0;
  void* record;
  const int32_t len[N] = {3, 0, 2};
  cubn_tensor_desc d = desc_of(CUBN_FLOAT32, order, N);
  cubn_training_forward_args a;
  size_t ws_bytes = 0;
  void* ws;
  int n, c, s;
  long i;
  for (i = 0; i < NUMEL; ++i) x[i] = (float)value(i, 3);
  for (n = 0; n < N; ++n)
    for (c = 0; c < C; ++c)
      for (s = 0; s < S; ++s)
        if (s % W >= len[n]) x[at(order, n, c, s)] = NAN;
  EXPECT_OK(cubn_forward_training_workspace_size(&d, &ws_bytes));
  ws = malloc(ws_bytes);
  cubn_training_forward_args_init(&a);
  CHECK(a.lengths.ptr == NULL);
  a.saved_mean = smean;
  a.saved_invstd = sinvstd;
  a.lengths.ptr = len;
  a.lengths.type = CUBN_LENGTH_INT32;
  a.lengths.padding = CUBN_PADDING_ZERO;
  EXPECT_OK(cubn_forward_training(&d, x, y, &a, ws, ws_bytes, NULL));
  /* the split phases with the same lengths, one rank: the same statistics */
  EXPECT_OK(cubn_local_stats_bytes(&d, &record_bytes));
  record = malloc(record_bytes);
  EXPECT_OK(cubn_forward_training_local_lengths(&d, x, &a.lengths, record, record_bytes, ws,
                                                ws_bytes, NULL));
  split = a;
  split.saved_mean = split_mean;
  split.saved_invstd = split_invstd;
  EXPECT_OK(cubn_forward_training_apply(&d, x, split_y, &split, record, record_bytes, 1, ws,
                                        ws_bytes, NULL));
  for (c = 0; c < C; ++c) {
    double sum = 0, sq = 0, m, k = 0;
    for (n = 0; n < N; ++n)
      for (s = 0; s < S; ++s)
        if (s % W < len[n]) {
          sum += x[at(order, n, c, s)];
          k += 1;
        }
    m = sum / k;
    for (n = 0; n < N; ++n)
      for (s = 0; s < S; ++s)
        if (s % W < len[n]) sq += (x[at(order, n, c, s)] - m) * (x[at(order, n, c, s)] - m);
    expect_near(smean[c], m, 2e-5, "lengths saved mean", c);
    expect_near(sinvstd[c], 1 / sqrt(sq / k + 1e-5), 2e-5, "lengths saved invstd", c);
    expect_near(split_mean[c], m, 2e-5, "split lengths saved mean", c);
    expect_near(split_invstd[c], 1 / sqrt(sq / k + 1e-5), 2e-5, "split lengths saved invstd", c);
    for (n = 0; n < N; ++n)
      for (s = 0; s < S; ++s)
        if (s % W >= len[n]) {
          CHECK(y[at(order, n, c, s)] == 0.0f);
          CHECK(split_y[at(order, n, c, s)] == 0.0f);
        }
  }
  a.lengths.type = 5;
  EXPECT_ERROR(cubn_forward_training(&d, x, y, &a, ws, ws_bytes, NULL),
               CUBN_STATUS_INVALID_ARGUMENT, "args.lengths.type");
  EXPECT_ERROR(cubn_forward_training_local_lengths(&d, x, &a.lengths, record, record_bytes, ws,
                                                   ws_bytes, NULL),
               CUBN_STATUS_INVALID_ARGUMENT, "lengths.type");
  free(record);
  free(ws);
}

int main(void) {
  lengths(CUBN_CHANNELS_FIRST);
  lengths(CUBN_CHANNELS_LAST);
  fp32_calls(CUBN_CHANNELS_FIRST);
  fp32_calls(CUBN_CHANNELS_LAST);
  fp64_and_split();
  errors();
  if (failures != 0) {
    fprintf(stderr, "%d failures\n", failures);
    return 1;
  }
  printf("cubn C ABI: every check passed\n");
  return 0;
}
