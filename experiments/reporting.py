"""What a training run writes: metrics, progress, GLIF parameter records, plots and a summary.

Only the chief process (index 0) writes; the others run the same code with ``enabled=False``.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from glif_jax import neuron
from glif_jax import nn as glif_nn


class Window:
    """Training metrics accumulated on device between two log lines.

    Accumulating costs no device-to-host transfer; :meth:`flush` reads the window back at a log
    line. Across windows it also keeps, on device, the first step whose loss was not finite and
    the last finite loss with its step (:meth:`loss_record`), for the run's non-finite guard.
    """

    def __init__(self):
        self.loss_state = {
            "first_non_finite": jnp.asarray(-1, jnp.int32),
            "last_finite": jnp.asarray([-1.0, 0.0], jnp.float32),  # (step, loss)
        }
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, Any] | None = None
        self.steps = 0
        self.examples = 0
        self.start = time.perf_counter()

    def add(self, metrics: dict[str, jax.Array], step: int, batch_size: int) -> None:
        """Add the metrics of ``step`` (``loss``, ``top1``, ``top5``) on device."""
        if self.sums is None:
            self.sums = jax.tree.map(jnp.zeros_like, metrics)
        self.sums, self.loss_state = _accumulate(self.sums, self.loss_state, metrics, step)
        self.steps += 1
        self.examples += batch_size

    def loss_record(self) -> tuple[int | None, dict[str, float] | None]:
        """The first step whose loss was not finite (or ``None``), and the last finite loss as
        ``{"step", "loss"}`` (or ``None``); reads them back from the device."""
        first, (step, loss) = jax.device_get(
            (self.loss_state["first_non_finite"], self.loss_state["last_finite"])
        )
        last = None if step < 0 else {"step": int(step), "loss": float(loss)}
        return (None if first < 0 else int(first)), last

    def flush(self) -> dict[str, float]:
        """Means over the window (top-k in percent) and the throughput; starts a new window."""
        sums = jax.device_get(self.sums)
        elapsed = time.perf_counter() - self.start
        out = {k: float(v) / self.steps for k, v in sums.items()}
        for k in ("top1", "top5"):
            out[k] *= 100.0
        out["images_per_s"] = self.examples / max(elapsed, 1e-9)
        self._reset()
        return out


@jax.jit
def _accumulate(sums, loss_state, metrics, step):
    finite = jnp.isfinite(metrics["loss"])
    first = loss_state["first_non_finite"]
    loss_state = {
        "first_non_finite": jnp.where((first < 0) & ~finite, step, first),
        "last_finite": jnp.where(
            finite,
            jnp.stack([jnp.float32(step), metrics["loss"].astype(jnp.float32)]),
            loss_state["last_finite"],
        ),
    }
    return jax.tree.map(jnp.add, sums, metrics), loss_state


def _json_value(value):
    """``value`` with every non-finite float as ``None``, so that the JSON is strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def strict_json(value, **kwargs) -> str:
    """``json.dumps`` that writes non-finite numbers as ``null`` instead of NaN or Infinity."""
    return json.dumps(_json_value(value), allow_nan=False, **kwargs)


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file; a last line cut short by a killed process is skipped."""
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class RunLog:
    """``metrics.jsonl``, TensorBoard events, the progress bar and printed lines of a run.

    ``metrics.jsonl`` holds one strict JSON object a line: non-finite numbers are written as
    ``null``. On resume (:meth:`start`), lines written after the restored step are dropped, so that
    the file reads as if the run had never stopped.
    """

    def __init__(self, workdir: Path, *, enabled: bool):
        self.workdir = workdir
        self.enabled = enabled
        self.path = workdir / "metrics.jsonl"
        self.writer = None
        if enabled:
            workdir.mkdir(parents=True, exist_ok=True)

    def start(self, resume_step: int = 0) -> None:
        """Open the logs for a run that starts (or resumes) after step ``resume_step``."""
        if not self.enabled:
            return
        if self.path.exists():
            kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step]
            write_atomically(self.path, "".join(strict_json(r) + "\n" for r in kept))
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=resume_step + 1)

    def print(self, line: str) -> None:
        if self.enabled:
            tqdm.tqdm.write(line)

    @contextlib.contextmanager
    def progress(self, total: int, initial: int):
        bar = tqdm.tqdm(
            total=total,
            initial=initial,
            unit="step",
            disable=not self.enabled,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        try:
            yield bar
        finally:
            bar.close()

    def _write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(strict_json(record) + "\n")

    def schedule_change(self, step: int, changes: dict[str, list]) -> None:
        """Say and record (``changes.jsonl``) that the run goes on from ``step`` with other
        values: ``changes`` maps each key to ``[checkpoint's value, this run's]``."""
        if not self.enabled:
            return
        said = ", ".join(f"{key} {was!r} → {now!r}" for key, (was, now) in changes.items())
        self.print(f"resuming at step {step} with a changed schedule: {said}")
        record = {"step": step, "changed": changes, "time": time.time()}
        with (self.workdir / "changes.jsonl").open("a") as f:
            f.write(strict_json(record) + "\n")

    def train(self, step: int, epoch: int, summary: dict[str, float], lr: float) -> None:
        """A train record at ``step`` of the 0-based ``epoch``; written 1-based (the epoch the
        step belongs to), as test records are."""
        if not self.enabled:
            return
        record = {"step": step, "epoch": epoch + 1, "split": "train", **summary}
        record["learning_rate"] = lr
        self._write(record)
        for key in ("loss", "top1", "top5", "images_per_s", "learning_rate"):
            self.writer.add_scalar(f"train/{key}", record[key], step)

    def eval(self, step: int, epoch: int, result: dict[str, float], best: float) -> None:
        if not self.enabled:
            return
        record = {"step": step, "epoch": epoch + 1, "split": "test", **result, "best_top1": best}
        self._write(record)
        for key in ("loss", "top1", "top5", "best_top1"):
            self.writer.add_scalar(f"test/{key}", record[key], step)
        self.writer.flush()
        tqdm.tqdm.write(
            f"epoch {epoch + 1}: test loss {result['loss']:.4f}, top-1 {result['top1']:.2f}%, "
            f"top-5 {result['top5']:.2f}% (best {best:.2f}%)"
        )

    def finish(self, summary: dict[str, Any], records: GlifRecords) -> None:
        if not self.enabled:
            return
        write_atomically(self.workdir / "summary.json", strict_json(summary, indent=2) + "\n")
        plot_learning_curve(self.path, self.workdir / "learning_curve.png")
        records.plot(self.workdir / "glif_params.png")
        self.writer.close()
        rows = [
            ("best test top-1", f"{summary['best_test_top1']:.2f} %"),
            ("final test top-1", f"{summary['final_test_top1']:.2f} %"),
            ("final test top-5", f"{summary['final_test_top5']:.2f} %"),
            ("epochs", f"{summary['epochs']:g}"),
            ("steps", str(summary["steps"])),
            ("wall time", f"{summary['wall_time_s']:.1f} s"),
            ("devices", f"{summary['devices']} × {summary['device_kind']}"),
        ]
        width = max(len(k) for k, _ in rows)
        table = "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)
        tqdm.tqdm.write(
            f"\n{table}\n\nwrote {self.workdir}/summary.json, metrics.jsonl, "
            "learning_curve.png, glif_params.npz, glif_params.png, tensorboard/"
        )


class GlifRecords:
    """Per-epoch raw values of every GLIF parameter of every GLIF layer (docs/reference.md §4.4,
    §6).

    Unlike the reference's ``record_param``, every layer (the stem included) and every parameter
    (``v_reset`` included) is recorded. Stored in an ``.npz``: key ``"<layer path>/<param>"`` holds
    an array ``(epochs + 1, *shape)``, row 0 being the initialisation; ``"epochs"`` lists them.
    """

    def __init__(self, path: Path, *, enabled: bool):
        self.path = path
        self.enabled = enabled
        self.epochs: list[int] = []
        self.values: dict[str, list[np.ndarray]] = {}

    def reset(self, layers: dict[str, glif_nn.GLIF]) -> None:
        self.epochs, self.values = [], {}
        self.append(layers, epoch=0)

    def load(self, completed_epochs: int) -> None:
        """Read the records of a previous run, up to ``completed_epochs``."""
        if not self.enabled or not self.path.exists():
            return
        with np.load(self.path) as data:
            keep = data["epochs"] <= completed_epochs
            self.epochs = [int(e) for e in data["epochs"][keep]]
            self.values = {k: list(data[k][keep]) for k in data.files if k != "epochs"}

    def append(self, layers: dict[str, glif_nn.GLIF], epoch: int) -> None:
        if not self.enabled:
            return
        self.epochs.append(epoch)
        for path, layer in layers.items():
            params = jax.device_get(layer.params)
            for name in neuron.PARAM_NAMES:
                value = getattr(params, name)
                if value is not None:
                    self.values.setdefault(f"{path}/{name}", []).append(np.asarray(value))
        arrays = {k: np.stack(v) for k, v in self.values.items()}
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, epochs=np.asarray(self.epochs), **arrays)
        tmp.replace(self.path)

    def plot(self, path: Path) -> None:
        """Per-layer distributions of σ(raw) at initialisation and after the last epoch."""
        if not self.enabled or not self.values:
            return
        plot_glif_params({k: np.stack(v) for k, v in self.values.items()}, self.epochs, path)


def figure(**kwargs):
    # A pyplot-free figure: plotting from a training run never touches the caller's backend.
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def plot_learning_curve(metrics_path: Path, out: Path) -> None:
    records = read_jsonl(metrics_path)
    train = [r for r in records if r["split"] == "train"]
    test = [r for r in records if r["split"] == "test"]
    fig = figure(figsize=(10, 3.6))
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    ax_loss.plot([r["step"] for r in test], [r["loss"] for r in test], "o-", label="test")
    ax_loss.set(xlabel="step", ylabel="cross-entropy loss", title="Loss")
    ax_acc.plot([r["step"] for r in train], [r["top1"] for r in train], label="train (batch)")
    ax_acc.plot([r["step"] for r in test], [r["top1"] for r in test], "o-", label="test")
    ax_acc.set(xlabel="step", ylabel="top-1 accuracy (%)", title="Accuracy", ylim=(0, 100))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def plot_glif_params(values: dict[str, np.ndarray], epochs: list[int], out: Path) -> None:
    """Box plots per layer of each parameter's σ(raw) values, first vs last record."""
    layers = list(dict.fromkeys(k.rsplit("/", 1)[0] for k in values))
    names = [n for n in neuron.PARAM_NAMES if any(k.endswith("/" + n) for k in values)]
    cols = 4
    rows = math.ceil(len(names) / cols)
    fig = figure(figsize=(4 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    positions = np.arange(len(layers))
    for ax, name in zip(axes.flat, names, strict=False):
        for row, color, label, offset in (
            (0, "tab:gray", f"epoch {epochs[0]}", -0.18),
            (-1, "tab:blue", f"epoch {epochs[-1]}", 0.18),
        ):
            data = [
                1 / (1 + np.exp(-values[f"{layer}/{name}"][row].ravel()))
                if f"{layer}/{name}" in values
                else np.array([np.nan])
                for layer in layers
            ]
            box = ax.boxplot(
                data, positions=positions + offset, widths=0.3, showfliers=False, patch_artist=True
            )
            for patch in box["boxes"]:
                patch.set(facecolor=color, alpha=0.5)
            ax.plot([], [], color=color, lw=6, alpha=0.5, label=label)
        ax.set(
            title=neuron.param_label(name),
            xlabel="GLIF layer (network order)",
            ylabel="σ(raw) value",
            ylim=(0, 1),
        )
        ax.set_xticks(positions, [str(i) for i in positions], fontsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    axes.flat[0].legend(loc="upper right", fontsize=8)
    fig.suptitle("GLIF parameters per layer, at initialisation and after training")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a process killed while
    writing leaves the old file whole."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
