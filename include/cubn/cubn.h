/* cubn's C ABI: every public call of the C++ API (cubn/cubn.hpp) for C and for anything that calls
 * C (Julia, Rust, ctypes, MATLAB's MEX, cubn's own Python package).
 *
 * Every call returns a cubn_status; CUBN_STATUS_SUCCESS is 0. After a failure,
 * cubn_last_error_message() returns the message of the last failed call on this host thread (it
 * names the argument at fault, as the C++ API's cubn::Error does); a rejected call writes nothing.
 * No C++ exception crosses this interface.
 *
 * Parameters and statistics (scale, offset, running, saved, gradients) are double for an fp64
 * tensor and float otherwise, passed as void pointers. Each argument struct has an _init function
 * that sets the C++ API's defaults (epsilon 1e-5, momentum 0.1, everything optional absent); start
 * from it, then set what the call needs.
 *
 * The CPU executor build (the library cubn_sim) exports the same calls under the prefix cubn_sim_
 * so that a program may link both libraries; a source that includes this header with CUBN_SIM
 * defined (linking cubn::sim defines it) calls them under the names below. */
#ifndef CUBN_CUBN_H_
#define CUBN_CUBN_H_

#include <stddef.h>
#include <stdint.h>

#ifdef CUBN_SIM /* the executor build's names */
#define cubn_training_forward_args_init cubn_sim_training_forward_args_init
#define cubn_inference_forward_args_init cubn_sim_inference_forward_args_init
#define cubn_training_backward_args_init cubn_sim_training_backward_args_init
#define cubn_frozen_backward_args_init cubn_sim_frozen_backward_args_init
#define cubn_status_string cubn_sim_status_string
#define cubn_last_error_message cubn_sim_last_error_message
#define cubn_forward_training_workspace_size cubn_sim_forward_training_workspace_size
#define cubn_backward_workspace_size cubn_sim_backward_workspace_size
#define cubn_activation_reserve_size cubn_sim_activation_reserve_size
#define cubn_local_stats_bytes cubn_sim_local_stats_bytes
#define cubn_local_grad_sums_bytes cubn_sim_local_grad_sums_bytes
#define cubn_forward_training cubn_sim_forward_training
#define cubn_forward_inference cubn_sim_forward_inference
#define cubn_backward_training cubn_sim_backward_training
#define cubn_backward_frozen cubn_sim_backward_frozen
#define cubn_forward_training_local cubn_sim_forward_training_local
#define cubn_forward_training_local_lengths cubn_sim_forward_training_local_lengths
#define cubn_forward_training_apply cubn_sim_forward_training_apply
#define cubn_backward_training_local cubn_sim_backward_training_local
#define cubn_backward_training_apply cubn_sim_backward_training_apply
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* The CUDA runtime's stream type (cudaStream_t is struct CUstream_st *); NULL is the default
 * stream. The executor build ignores it. */
typedef struct CUstream_st* cubn_stream;

typedef enum cubn_status {
  CUBN_STATUS_SUCCESS = 0,
  CUBN_STATUS_INVALID_ARGUMENT = 1,   /* a null pointer, a bad size, an out-of-range parameter */
  CUBN_STATUS_INVALID_DATA_TYPE = 2,  /* a dtype the call does not support */
  CUBN_STATUS_INVALID_LAYOUT = 3,     /* a memory order or rank the call does not support */
  CUBN_STATUS_MISALIGNED_OPERAND = 4, /* a pointer without the alignment its dtype requires */
  CUBN_STATUS_WORKSPACE_TOO_SMALL = 5,
  CUBN_STATUS_SIZE_OVERFLOW = 6,  /* a size product that does not fit in 64 bits */
  CUBN_STATUS_INVALID_LAUNCH = 7, /* a launch shape the device cannot run */
  CUBN_STATUS_CUDA_ERROR = 8,     /* the CUDA runtime reported an error */
  CUBN_STATUS_KERNEL_FAULT = 9,   /* the CPU executor caught a kernel breaking a CUDA rule */
  CUBN_STATUS_COMMUNICATION_ERROR = 10,
  CUBN_STATUS_INTERNAL_ERROR = 11 /* anything else (out of host memory): a bug to report */
} cubn_status;

typedef enum cubn_dtype {
  CUBN_FLOAT16 = 0,
  CUBN_BFLOAT16 = 1,
  CUBN_FLOAT32 = 2,
  CUBN_FLOAT64 = 3
} cubn_dtype;

typedef enum cubn_memory_order {
  CUBN_CHANNELS_FIRST = 0, /* NCHW, NCDHW, NCL, NC: contiguous */
  CUBN_CHANNELS_LAST = 1   /* NHWC, NDHWC, NLC */
} cubn_memory_order;

typedef enum cubn_activation {
  CUBN_ACTIVATION_NONE = 0,
  CUBN_ACTIVATION_RELU = 1,
  CUBN_ACTIVATION_SILU = 2
} cubn_activation;

/* A tensor: dims are logical (N, C, spatial...) whatever the memory order; rank 2 to 5. Enum
 * fields of the structs are int32_t (any value is checked; the layout is the same for every C
 * compiler). */
typedef struct cubn_tensor_desc {
  int32_t dtype; /* a cubn_dtype */
  int32_t order; /* a cubn_memory_order */
  int32_t rank;
  int64_t dims[5];
} cubn_tensor_desc;

/* Activation and residual fused into the normalization: y = act(bn(x) + residual). */
typedef struct cubn_epilogue {
  int32_t activation;   /* a cubn_activation */
  const void* residual; /* optional: a tensor like x */
  void* reserve;        /* written for backward; cubn_activation_reserve_size bytes */
  size_t reserve_bytes;
} cubn_epilogue;

typedef struct cubn_epilogue_grad {
  int32_t activation;   /* the forward's cubn_activation */
  const void* residual; /* the forward's residual pointer (only whether it was given) */
  const void* reserve;  /* what the forward wrote */
  size_t reserve_bytes;
  void* dz; /* written: the residual's gradient, required when the forward had a residual */
} cubn_epilogue_grad;

/* Lengths' integer type and what padded outputs receive (cubn::LengthType, cubn::Padding). */
typedef enum cubn_length_type { CUBN_LENGTH_INT32 = 0, CUBN_LENGTH_INT64 = 1 } cubn_length_type;
typedef enum cubn_padding { CUBN_PADDING_ZERO = 0, CUBN_PADDING_UNTOUCHED = 1 } cubn_padding;

/* A variable-length batch (cubn::Lengths): sample n's valid positions along the last spatial (time)
 * axis are the first lengths[n] (clamped to [0, L] on the device); statistics and gradient sums
 * over the valid positions only. ptr NULL (the _init default): every position is valid. */
typedef struct cubn_lengths {
  const void* ptr; /* N lengths on the device, int32 or int64 */
  int32_t type;    /* a cubn_length_type */
  int32_t padding; /* a cubn_padding: what y, dx or dz receive at padded positions */
} cubn_lengths;

typedef struct cubn_training_forward_args {
  const void* scale;                  /* read; optional (1) */
  const void* offset;                 /* read; optional (0) */
  double epsilon;                     /* > 0 */
  void* running_mean;                 /* read and written; optional, each on its own */
  void* running_var;                  /* updated with the unbiased batch variance */
  double momentum_mean, momentum_var; /* running = (1 - m) running + m batch; in [0, 1] */
  void* saved_mean;                   /* written; optional */
  void* saved_invstd;                 /* written; optional */
  cubn_epilogue epilogue;
  cubn_lengths lengths; /* optional */
} cubn_training_forward_args;

typedef struct cubn_inference_forward_args {
  const void* scale;
  const void* offset;
  const void* running_mean; /* read; required */
  const void* running_var;  /* read; required */
  double epsilon;
  cubn_epilogue epilogue;
  cubn_lengths lengths; /* optional */
} cubn_inference_forward_args;

typedef struct cubn_param_gradients {
  void* dscale;   /* sum(dy * xhat); optional */
  void* doffset;  /* sum(dy); optional */
  int accumulate; /* nonzero: add to what is there */
} cubn_param_gradients;

typedef struct cubn_training_backward_args {
  const void* scale;        /* the forward's; optional (1) */
  const void* saved_mean;   /* what the forward saved; required */
  const void* saved_invstd; /* required */
  cubn_param_gradients grads;
  cubn_epilogue_grad epilogue;
  cubn_lengths lengths; /* the forward's; optional */
} cubn_training_backward_args;

typedef struct cubn_frozen_backward_args {
  const void* scale;
  const void* running_mean; /* the statistics the inference forward used; required */
  const void* running_var;
  double epsilon; /* the forward's */
  cubn_param_gradients grads;
  cubn_epilogue_grad epilogue;
  const void* offset; /* the forward's offset; needed only with an activation */
  cubn_lengths lengths; /* the forward's; optional */
} cubn_frozen_backward_args;

void cubn_training_forward_args_init(cubn_training_forward_args* args);
void cubn_inference_forward_args_init(cubn_inference_forward_args* args);
void cubn_training_backward_args_init(cubn_training_backward_args* args);
void cubn_frozen_backward_args_init(cubn_frozen_backward_args* args);

/* The status's name ("invalid argument"); never NULL. */
const char* cubn_status_string(cubn_status status);
/* The message of the last failed call on this thread ("" before any); valid until the next call
 * on this thread. */
const char* cubn_last_error_message(void);

/* Size queries (the C++ API's of the same name); *bytes is written on success. */
cubn_status cubn_forward_training_workspace_size(const cubn_tensor_desc* x_desc, size_t* bytes);
cubn_status cubn_backward_workspace_size(const cubn_tensor_desc* x_desc, size_t* bytes);
cubn_status cubn_activation_reserve_size(const cubn_tensor_desc* x_desc, int32_t activation,
                                         size_t* bytes);
cubn_status cubn_local_stats_bytes(const cubn_tensor_desc* x_desc, size_t* bytes);
cubn_status cubn_local_grad_sums_bytes(const cubn_tensor_desc* x_desc, size_t* bytes);

/* Batch norm on one device (cubn/batch_norm.hpp). The workspace is the caller's, of any content
 * (it needs no zero-filling); it must not overlap the call's other memory. */
cubn_status cubn_forward_training(const cubn_tensor_desc* x_desc, const void* x, void* y,
                                  const cubn_training_forward_args* args, void* workspace,
                                  size_t workspace_bytes, cubn_stream stream);
cubn_status cubn_forward_inference(const cubn_tensor_desc* x_desc, const void* x, void* y,
                                   const cubn_inference_forward_args* args, cubn_stream stream);
cubn_status cubn_backward_training(const cubn_tensor_desc* x_desc, const void* x, const void* dy,
                                   void* dx, const cubn_training_backward_args* args,
                                   void* workspace, size_t workspace_bytes, cubn_stream stream);
cubn_status cubn_backward_frozen(const cubn_tensor_desc* x_desc, const void* x, const void* dy,
                                 void* dx, const cubn_frozen_backward_args* args, void* workspace,
                                 size_t workspace_bytes, cubn_stream stream);

/* Synchronized batch norm in two phases around the caller's all-gather (cubn/distributed.hpp):
 * `local` is this rank's record, `gathered` the ranks' records end to end, in rank order. */
cubn_status cubn_forward_training_local(const cubn_tensor_desc* x_desc, const void* x, void* local,
                                        size_t local_bytes, void* workspace, size_t workspace_bytes,
                                        cubn_stream stream);
/* The same for a variable-length batch: this rank's N lengths (lengths->padding is not used here;
 * lengths NULL or lengths->ptr NULL: every position is valid). The other phases take the same
 * lengths in their args. */
cubn_status cubn_forward_training_local_lengths(const cubn_tensor_desc* x_desc, const void* x,
                                                const cubn_lengths* lengths, void* local,
                                                size_t local_bytes, void* workspace,
                                                size_t workspace_bytes, cubn_stream stream);
cubn_status cubn_forward_training_apply(const cubn_tensor_desc* x_desc, const void* x, void* y,
                                        const cubn_training_forward_args* args,
                                        const void* gathered, size_t gathered_bytes, int ranks,
                                        void* workspace, size_t workspace_bytes,
                                        cubn_stream stream);
cubn_status cubn_backward_training_local(const cubn_tensor_desc* x_desc, const void* x,
                                         const void* dy, const cubn_training_backward_args* args,
                                         void* local, size_t local_bytes, void* workspace,
                                         size_t workspace_bytes, cubn_stream stream);
cubn_status cubn_backward_training_apply(const cubn_tensor_desc* x_desc, const void* x,
                                         const void* dy, void* dx,
                                         const cubn_training_backward_args* args,
                                         const void* gathered, size_t gathered_bytes, int ranks,
                                         void* workspace, size_t workspace_bytes,
                                         cubn_stream stream);

#ifdef __cplusplus
}
#endif

#endif /* CUBN_CUBN_H_ */
