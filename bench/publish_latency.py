"""Time from the end of an optimizer step to the first completion vLLM serves with the new version.

    python bench/publish_latency.py [--models tiny,smollm2] [--publishes 7] [--data-dir DIR]

For each model: start a vLLM CPU server (``POLICYOPT_VLLM_PYTHON``), an embedded Valkey and
``ServingSync`` in a thread; then, as the trainer does, repeat: one AdamW step on a LoRA (r=16) ->
save the optimizer state -> write the PEFT adapter into the adapter store -> ``commit_step``; serving
sync sees the publication, loads ``RUN@vN`` and sends its probe completion. Prints the median over
the publishes, with the parts: step end -> committed (checkpoint + adapter write + Redis) and
committed -> served (sync wake-up, load_lora_adapter, first completion).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import redis
import torch

from policyopt.core.types import AdapterManifest, RunConfig
from policyopt.core.valkey import EmbeddedValkey
from policyopt.models import ModelCatalog, build_tiny_model, resolve_base_model
from policyopt.state.adapter_store import LocalAdapterStore
from policyopt.state.queue import WorkQueue
from policyopt.state.runs import RunStore
from policyopt.workers.engines.vllm_launch import VLLMServer
from policyopt.workers.placement import Placement
from policyopt.workers.serving import Served, ServingSync
from policyopt.workers.train import policy
from policyopt.workers.train.checkpoint import CheckpointStore


@dataclass
class Timing:
    to_committed_s: float
    to_served_s: float


class Trainer:
    """The trainer's publish path on one LoRA, without queues: step, checkpoint, publish, commit."""

    def __init__(self, model_dir: Path, work: Path, r: redis.Redis) -> None:
        config = RunConfig(base_model=str(model_dir), lora_rank=16, lora_alpha=32)
        models = ModelCatalog(str(work), roots=(str(model_dir.parent),))
        self.model, _pad = policy.load_policy(config, Placement(torch.device("cpu"), torch.float32), models)
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-3)
        self.vocab = int(self.model.config.vocab_size)
        self.runs, self.queue = RunStore(r), WorkQueue(r)
        self.store = LocalAdapterStore(work / "adapters")
        self.checkpoints = CheckpointStore(work / "checkpoints")
        self.staging = work / "staging"
        self.run_id = self.runs.create_run("bench", config).run_id

    def step(self) -> float:
        """One optimizer step on a random batch; returns the time it ended."""
        ids = torch.randint(0, self.vocab, (4, 64))
        loss = self.model(input_ids=ids, labels=ids).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.time()

    def publish(self, version: int) -> float:
        """Checkpoint, write the adapter version, commit it; returns the time the commit returned."""
        self.checkpoints.save(self.run_id, version, {"updater": {"optimizer": self.optimizer.state_dict()}})
        staging = self.staging / f"v{version}"
        staging.mkdir(parents=True)
        policy.save_adapter(self.model, staging)  # type: ignore[arg-type]
        manifest = AdapterManifest(self.run_id, version, version, "bench", "grpo")
        self.store.publish(self.run_id, version, staging, manifest)
        self.runs.commit_step(self.queue, manifest, [])
        return time.time()


def measure(model_name: str, model_dir: Path, publishes: int, work: Path) -> list[Timing]:
    with (
        EmbeddedValkey(work / "valkey", appendonly=False) as valkey,
        VLLMServer(model_dir, served_name=model_name, max_loras=4, log_path=work / "vllm.log") as server,
    ):
        r = redis.Redis.from_url(valkey.url)
        trainer = Trainer(model_dir, work, r)
        served: dict[str, Served] = {}
        arrived = threading.Condition()

        def on_served(record: Served) -> None:
            with arrived:
                served[record.name] = record
                arrived.notify_all()

        sync = ServingSync(r, trainer.store.root, [server.url], run_id=trainer.run_id, on_served=on_served)
        stop = threading.Event()
        thread = threading.Thread(target=sync.run_forever, args=(stop,), daemon=True)
        thread.start()
        timings = []
        for version in range(1, publishes + 1):
            step_end = trainer.step()
            committed = trainer.publish(version)
            name = f"{trainer.run_id}@v{version}"
            with arrived:
                if not arrived.wait_for(lambda name=name: name in served, timeout=120):
                    raise RuntimeError(f"{name} was not served within 120 s; see {work / 'vllm.log'}")
            timings.append(Timing(committed - step_end, served[name].served_at - step_end))
            time.sleep(0.2)  # let the sync unload the previous version before the next step
        stop.set()
        thread.join(10)
        return timings


def report(model_name: str, timings: list[Timing]) -> None:
    total = [t.to_served_s for t in timings]
    committed = [t.to_committed_s for t in timings]
    tail = [t.to_served_s - t.to_committed_s for t in timings]
    print(
        f"{model_name:8s} step end -> first served completion: median {statistics.median(total) * 1000:7.1f} ms "
        f"(min {min(total) * 1000:.1f}, max {max(total) * 1000:.1f}, n={len(total)}); "
        f"of which step end -> committed {statistics.median(committed) * 1000:.1f} ms, "
        f"committed -> served {statistics.median(tail) * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", default="tiny,smollm2", help="comma-separated: tiny, smollm2 or a model dir"
    )
    parser.add_argument("--publishes", type=int, default=7)
    parser.add_argument(
        "--data-dir", default=str(Path.home() / ".policyopt"), help="where smollm2 is converted"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # vLLM's CPU engine gets the other core
    for model_name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix=f"publish-latency-{model_name}-") as tmp:
            work = Path(tmp)
            if model_name == "tiny":
                model_dir = build_tiny_model(work / "model")
            else:
                model_dir = resolve_base_model(model_name, args.data_dir)
            report(model_name, measure(model_name, model_dir, args.publishes, work))


if __name__ == "__main__":
    main()
