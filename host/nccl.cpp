// cubn::nccl (cubn/nccl.hpp): the split-phase calls with NCCL's all-gather between the phases.
#include "cubn/nccl.hpp"

#include <nvtx3/nvtx3.hpp>
#include <string>

#include "problem.hpp"
#include "split_checks.hpp"

namespace cubn::nccl {

namespace {

using detail::fail;

// Where a call's regions lie in its workspace: the split calls' own workspace first (its tickets
// at offset 0), then the R records (the all-gather's buffer), 256-byte aligned.
struct Layout {
  int ranks = 0, rank = 0;
  std::size_t split = 0;   ///< the split calls' workspace
  std::size_t offset = 0;  ///< of the records
  std::size_t record = 0;  ///< one rank's record
  std::size_t bytes() const { return offset + record * static_cast<std::size_t>(ranks); }
};

void check_nccl(ncclResult_t r, const char* call, const char* what) {
  if (r != ncclSuccess)
    fail(Status::kCommunicationError, call,
         std::string(what) + " failed: " + ncclGetErrorString(r));
}

// Checked before anything else, the size queries (which may ask the device) included.
void check_comm(const char* call, ncclComm_t comm) {
  if (comm == nullptr) fail(Status::kInvalidArgument, call, "comm is null");
}

Layout layout_of(const char* call, ncclComm_t comm, std::size_t split, std::size_t record) {
  Layout l;
  check_nccl(ncclCommCount(comm, &l.ranks), call, "ncclCommCount");
  check_nccl(ncclCommUserRank(comm, &l.rank), call, "ncclCommUserRank");
  l.split = split;
  l.offset = (split + 255) / 256 * 256;
  l.record = record;
  return l;
}

// The split workspace and the gathered records within `ws`, after checking its size.
struct Regions {
  Workspace split;
  GatheredRecords gathered;
  RankRecord mine;
};

Regions regions_of(const char* call, const char* query, const Layout& l, const Workspace& ws) {
  if (ws.bytes < l.bytes())
    fail(Status::kWorkspaceTooSmall, call,
         "workspace.bytes is " + std::to_string(ws.bytes) + "; this call needs " +
             std::to_string(l.bytes()) + " (" + query + ")");
  detail::check_pointer(call, "workspace.ptr", ws.ptr, 16);
  unsigned char* records = static_cast<unsigned char*>(ws.ptr) + l.offset;
  Regions r;
  r.split = {ws.ptr, l.split};
  r.gathered = {records, l.record * static_cast<std::size_t>(l.ranks), l.ranks};
  r.mine = {records + l.record * static_cast<std::size_t>(l.rank), l.record};
  return r;
}

// Every rank's record into every rank's buffer, in rank order (in place: this rank's record is
// already at its slot).
void all_gather(const char* call, const Regions& r, ncclComm_t comm, cudaStream_t stream) {
  check_nccl(ncclAllGather(r.mine.ptr, const_cast<void*>(r.gathered.ptr), r.mine.bytes, ncclUint8,
                           comm, stream),
             call, "ncclAllGather");
}

constexpr const char* kForwardCall = "cubn::nccl::forward_training";
constexpr const char* kBackwardCall = "cubn::nccl::backward_training";
constexpr const char* kForwardQuery = "cubn::nccl::forward_training_workspace_size";
constexpr const char* kBackwardQuery = "cubn::nccl::backward_workspace_size";

Layout forward_layout(const char* call, const TensorDesc& x, ncclComm_t comm) {
  check_comm(call, comm);
  return layout_of(call, comm, cubn::forward_training_workspace_size(x), local_stats_bytes(x));
}

Layout backward_layout(const char* call, const TensorDesc& x, ncclComm_t comm) {
  check_comm(call, comm);
  return layout_of(call, comm, cubn::backward_workspace_size(x), local_grad_sums_bytes(x));
}

template <class P>
void forward_impl(const TensorDesc& desc, const void* x, void* y,
                  const TrainingForwardArgs<P>& args, Workspace ws, ncclComm_t comm,
                  cudaStream_t stream) {
  nvtx3::scoped_range range{kForwardCall};
  const Regions r =
      regions_of(kForwardCall, kForwardQuery, forward_layout(kForwardCall, desc, comm), ws);
  // every check before the first launch: a call that throws has launched nothing
  detail::check_forward_training_apply(desc, x, y, args, r.gathered, r.split);
  forward_training_local(desc, x, args.lengths, r.mine, r.split, stream);
  all_gather(kForwardCall, r, comm, stream);
  forward_training_apply(desc, x, y, args, r.gathered, r.split, stream);
}

template <class P>
void backward_impl(const TensorDesc& desc, const void* x, const void* dy, void* dx,
                   const TrainingBackwardArgs<P>& args, Workspace ws, ncclComm_t comm,
                   cudaStream_t stream) {
  nvtx3::scoped_range range{kBackwardCall};
  const Regions r =
      regions_of(kBackwardCall, kBackwardQuery, backward_layout(kBackwardCall, desc, comm), ws);
  TrainingBackwardArgs<P> local = args, apply = args;
  local.epilogue.dz = nullptr;  // written by the apply phase
  apply.grads = {};             // written by the local phase
  detail::check_backward_training_apply(desc, x, dy, dx, apply, r.gathered, r.split);
  backward_training_local(desc, x, dy, local, r.mine, r.split, stream);
  all_gather(kBackwardCall, r, comm, stream);
  backward_training_apply(desc, x, dy, dx, apply, r.gathered, r.split, stream);
}

}  // namespace

std::size_t forward_training_workspace_size(const TensorDesc& x, ncclComm_t comm) {
  return forward_layout(kForwardQuery, x, comm).bytes();
}

std::size_t backward_workspace_size(const TensorDesc& x, ncclComm_t comm) {
  return backward_layout(kBackwardQuery, x, comm).bytes();
}

void forward_training(const TensorDesc& x_desc, const void* x, void* y,
                      const TrainingForwardArgs<float>& args, Workspace workspace, ncclComm_t comm,
                      cudaStream_t stream) {
  forward_impl(x_desc, x, y, args, workspace, comm, stream);
}

void forward_training(const TensorDesc& x_desc, const void* x, void* y,
                      const TrainingForwardArgs<double>& args, Workspace workspace, ncclComm_t comm,
                      cudaStream_t stream) {
  forward_impl(x_desc, x, y, args, workspace, comm, stream);
}

void backward_training(const TensorDesc& x_desc, const void* x, const void* dy, void* dx,
                       const TrainingBackwardArgs<float>& args, Workspace workspace,
                       ncclComm_t comm, cudaStream_t stream) {
  backward_impl(x_desc, x, dy, dx, args, workspace, comm, stream);
}

void backward_training(const TensorDesc& x_desc, const void* x, const void* dy, void* dx,
                       const TrainingBackwardArgs<double>& args, Workspace workspace,
                       ncclComm_t comm, cudaStream_t stream) {
  backward_impl(x_desc, x, dy, dx, args, workspace, comm, stream);
}

}  // namespace cubn::nccl
