/* cubn's C ABI for synchronized batch norm over an NCCL communicator (the C++ cubn::nccl,
 * cubn/nccl.hpp; library cubn_nccl, CMake target cubn::nccl): the local phase, an in-place
 * ncclAllGather of the ranks' records on the caller's stream, and the apply phase, in one call.
 * Conventions (status, last error message, argument structs) are cubn/cubn.h's. */
#ifndef CUBN_CUBN_NCCL_H_
#define CUBN_CUBN_NCCL_H_

#include "cubn/cubn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* NCCL's communicator (ncclComm_t is struct ncclComm *). */
typedef struct ncclComm* cubn_nccl_comm;

/* Workspace bytes of the calls below for x on this communicator (the split calls' workspace and
 * every rank's record). */
cubn_status cubn_nccl_forward_training_workspace_size(const cubn_tensor_desc* x_desc,
                                                      cubn_nccl_comm comm, size_t* bytes);
cubn_status cubn_nccl_backward_workspace_size(const cubn_tensor_desc* x_desc, cubn_nccl_comm comm,
                                              size_t* bytes);

/* cubn_forward_training and cubn_backward_training with statistics (and gradient sums) over
 * every rank's batch; dscale and doffset are this rank's share. */
cubn_status cubn_nccl_forward_training(const cubn_tensor_desc* x_desc, const void* x, void* y,
                                       const cubn_training_forward_args* args, void* workspace,
                                       size_t workspace_bytes, cubn_nccl_comm comm,
                                       cubn_stream stream);
cubn_status cubn_nccl_backward_training(const cubn_tensor_desc* x_desc, const void* x,
                                        const void* dy, void* dx,
                                        const cubn_training_backward_args* args, void* workspace,
                                        size_t workspace_bytes, cubn_nccl_comm comm,
                                        cubn_stream stream);

#ifdef __cplusplus
}
#endif

#endif /* CUBN_CUBN_NCCL_H_ */
