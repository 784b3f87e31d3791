"""`linearize` CLI entry for tests launched with `torchrun` on CPU processes (gloo).

``--fsdp2`` shards with FSDP2 through accelerate's own preparation (``fully_shard`` per decoder layer).
Accelerate only routes FSDP when GPUs are present, so this launcher switches its state to FSDP after
creating it; everything after that is the code path of a GPU FSDP2 run.
"""

import sys

import linearize.training as training

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
