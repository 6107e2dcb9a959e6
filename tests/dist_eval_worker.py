"""Run by test_finetune: one rank of a 2-process Gloo group evaluates a finetuning model
(``Finetune.evaluate``) and writes its stats. argv: INIT_FILE OUT_DIR RANK main_finetune flags..."""
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ssvit.cli.finetune import parse  # noqa: E402
from ssvit.methods.finetune import Finetune  # noqa: E402

if __name__ == "__main__":
    init, out, rank = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    torch.manual_seed(0)
    m = Finetune(parse(sys.argv[4:]))
    stats = m.evaluate(m.student)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"stats": stats, "local_samples": len(m.val_loader().dataset)}, f)
    dist.destroy_process_group()
