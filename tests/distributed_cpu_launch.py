"""`linearize` CLI entry for tests launched with `torchrun` on CPU processes (gloo).

``--fsdp2`` shards with FSDP2 through accelerate's own preparation (``fully_shard`` per decoder layer).
Accelerate only routes FSDP when GPUs are present, so this launcher switches its state to FSDP after
creating it; everything after that is the code path of a GPU FSDP2 run.

``--kernels`` routes the attention modules to the Triton kernels for CPU tensors too (they run in the
interpreter: ``TRITON_INTERPRET=1`` comes from the test's environment), as they are for CUDA tensors, and
fails on any call that would fall back to the reference.
"""

import sys

import linearize.training as training

if "--kernels" in sys.argv:
    sys.argv.remove("--kernels")
    import triton_interpreter  # tests/, this script's folder
    from kernel_routing import route_attention_to_kernels

    triton_interpreter.install()
    route_attention_to_kernels()

FSDP2 = "--fsdp2" in sys.argv
if FSDP2:
    sys.argv.remove("--fsdp2")
    _make_accelerator = training.make_accelerator

    def make_fsdp2_accelerator():
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        accelerator = _make_accelerator()
        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True,
            state_dict_type="FULL_STATE_DICT",
        )
        accelerator.state.fsdp_plugin = plugin
        accelerator.state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # new AcceleratorState()s copy it
        return accelerator

    training.make_accelerator = make_fsdp2_accelerator

from linearize.cli import main  # noqa: E402

sys.exit(main())
