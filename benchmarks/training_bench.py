"""LoRA fine-tuning throughput and memory: the app's training path against a plain pad-to-max baseline,
and LoRA against QLoRA, on the bundled SmolLM2.

What is measured, why:

  (1) app vs baseline, same data, model, LoRA config (rank 8, alpha 16, dropout 0.05 on q/k/v/o),
      batch size, steps, learning rate and seed; each side in its own subprocess (peak RSS,
      `ru_maxrss`, is per process):
        * app: the pieces `core/training/run.py` uses, in-process: `tokenize_examples` (chat
          template, labels on the assistant's tokens only), the `PadToLongest` collator and
          `train_sampling_strategy="group_by_length"`, so each batch is padded only to its own
          longest example and batches hold examples of similar length;
        * baseline: the common recipe: the chat-templated text tokenized with
          `padding="max_length"` to `--max-length`, labels = input_ids with padding masked (the
          loss covers every real token, prompt included), random batches.
      Useful tokens/s = non-padding tokens fed to the model (sum of the attention masks of every
      batch, counted in the collator) / training seconds. Goal: app ≥ 1.3× baseline.
      The training losses are not comparable (answer tokens only vs all tokens), so both trained
      adapters are also scored the same way afterwards: mean loss over the answer tokens of a fixed
      held-out batch (8 examples not trained on), with the loss of the untrained model beside it.

  (2) LoRA vs QLoRA memory and step time: the app's data path, `--qlora-steps` steps each, the
      model in float32 (LoRA) or 4-bit NF4 with double quantization and float32 compute (QLoRA,
      after `peft.prepare_model_for_kbit_training` with the app's default of no gradient
      checkpointing). Each in its own subprocess.

Subprocesses run in alternating order (app, baseline, baseline, app, ...) when `--reps` > 1 so
that load from other processes on a shared machine hits both sides alike; medians are printed.
The data are synthetic (`--examples` question/answer pairs of 5–60 words each, fixed seed).

    PYTHONPATH=. .venv/bin/python benchmarks/training_bench.py [--steps 12] [--reps 1] [--qlora-steps 4]
    (internally: ... training_bench.py --side app|baseline|lora|qlora prints one RESULT line)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

from _common import machine, median, table

WORDS = (
    "the a model data river mountain city energy protein cell market price water light heat system network "
    "signal memory layer value function history policy climate soil plant animal engine wheel bridge road "
    "music language number theory method result study patient treatment risk growth change process rule "
    "simple careful quick large small early late common rare important useful different similar strong weak "
    "explain describe compare measure build grow reduce increase protect choose learn teach move hold carry "
    "because while although when where which that often usually rarely always never also only still then"
).split()


def synthetic_examples(count: int, seed: int) -> list[list[dict]]:
    """Chat Q/A pairs of varied length (questions and answers of 5–60 words)."""
    rng = random.Random(seed)

    def sentence(low: int, high: int, end: str) -> str:
        words = [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
        return " ".join(words).capitalize() + end

    return [[{"role": "user", "content": sentence(5, 60, "?")}, {"role": "assistant", "content": sentence(5, 60, ".")}]
            for _ in range(count)]


class CountingCollator:
    """Wraps a collator: counts real (attention-mask) and padded tokens of every batch it builds."""

    def __init__(self, inner):
        self.inner, self.real, self.padded, self.batches = inner, 0, 0, 0

    def __call__(self, features):
        batch = self.inner(features)
        self.real += int(batch["attention_mask"].sum())
        self.padded += int(batch["attention_mask"].numel())
        self.batches += 1
        return batch


def baseline_rows(tokenizer, examples, max_length: int) -> list[dict]:
    rows = []
    for messages in examples:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        encoded = tokenizer(text, max_length=max_length, padding="max_length", truncation=True, add_special_tokens=False)
        labels = [t if m else -100 for t, m in zip(encoded["input_ids"], encoded["attention_mask"], strict=True)]
        rows.append({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels})
    return rows


def answer_loss(model, batch) -> float:
    """Mean loss over the answer tokens of the held-out batch (labels already mask everything else)."""
    import torch

    model.eval()
    with torch.no_grad():
        loss = float(model(**batch).loss)
    model.train()
    return loss


def run_side(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
        set_seed,
    )

    from core.models import BUNDLED_MODEL, resolve_model_path
    from core.training.data import PadToLongest, tokenize_examples

    set_seed(args.seed)
    path = resolve_model_path(BUNDLED_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    examples = synthetic_examples(args.examples, seed=1)
    held_out = PadToLongest(tokenizer.pad_token_id)(tokenize_examples(tokenizer, synthetic_examples(8, seed=2),
                                                                      args.max_length))

    if args.side == "baseline":
        rows, collator, sampling = baseline_rows(tokenizer, examples, args.max_length), default_data_collator, "random"
    else:
        rows, collator = tokenize_examples(tokenizer, examples, args.max_length), PadToLongest(tokenizer.pad_token_id)
        sampling = "group_by_length"
    counter = CountingCollator(collator)

    kwargs: dict = {"dtype": torch.float32}
    if args.side == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32)
        kwargs["device_map"] = {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if args.side == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    footprint = model.get_memory_footprint()
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    loss_before = answer_loss(model, held_out)

    step_times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.started = time.perf_counter()

        def on_step_end(self, *_, **__):
            step_times.append(time.perf_counter() - self.started)

    steps = args.qlora_steps if args.side in ("lora", "qlora") else args.steps
    with tempfile.TemporaryDirectory(prefix="es-train-bench-") as output:
        arguments = TrainingArguments(
            output_dir=output, per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
            lr_scheduler_type="cosine", max_steps=steps, logging_steps=1, save_strategy="no", seed=args.seed,
            train_sampling_strategy=sampling, use_cpu=True, remove_unused_columns=False, report_to=[],
            disable_tqdm=True, dataloader_num_workers=0,
        )
        trainer = Trainer(model=model, args=arguments, train_dataset=rows, data_collator=counter, callbacks=[StepTimer()])
        result = trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    seconds = result.metrics["train_runtime"]
    return {
        "side": args.side, "steps": result.global_step, "seconds": seconds, "real_tokens": counter.real,
        "padded_tokens": counter.padded, "useful_tps": counter.real / seconds, "all_tps": counter.padded / seconds,
        "step_median": median(step_times[1:] or step_times), "train_loss_mean": result.training_loss,
        "train_loss_last": losses[-1] if losses else float("nan"), "heldout_before": loss_before,
        "heldout_after": answer_loss(model, held_out), "rss_loaded_mb": rss_loaded,
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "footprint_mb": footprint / 2**20,
        "examples": len(rows),
    }


def spawn(side: str, args, timeout: float | None = None) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--side", side, "--steps", str(args.steps),
               "--qlora-steps", str(args.qlora_steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
               "--max-length", str(args.max_length), "--examples", str(args.examples), "--seed", str(args.seed)]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  {side}: did not finish within {timeout:.0f} s", flush=True)
        return {"side": side, "error": f"did not finish within {timeout:.0f} s (--side-timeout)"}
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        print(f"  {side}: FAILED (exit {done.returncode}): {' / '.join(tail)}", flush=True)
        return {"side": side, "error": tail[-1] if tail else f"exit {done.returncode}"}
    result = json.loads(line.removeprefix("RESULT "))
    print(f"  {side}: {result['steps']} steps in {result['seconds']:.1f} s "
          f"(process {time.perf_counter() - started:.0f} s)", flush=True)
    return result


def summary(runs: list[dict], key: str) -> float:
    return median([r[key] for r in runs])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=("app", "baseline", "lora", "qlora"), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps of the app and baseline runs")
    parser.add_argument("--reps", type=int, default=1, help="subprocess runs of each of app and baseline, interleaved")
    parser.add_argument("--qlora-steps", type=int, default=4, help="steps of the LoRA and QLoRA runs (0 skips them)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-length", type=int, default=256, help="max_seq_length (the baseline pads to it)")
    parser.add_argument("--examples", type=int, default=64, help="synthetic training Q/A pairs")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--side-timeout", type=float, default=900, help="give up on a LoRA/QLoRA subprocess after this")
    args = parser.parse_args()

    if args.side:
        print("RESULT " + json.dumps(run_side(args)), flush=True)
        return 0

    print(f"machine: {machine()}, load average {os.getloadavg()[0]:.1f}")
    print(f"data: {args.examples} synthetic chat Q/A pairs (5–60 words each), max length {args.max_length}; "
          f"LoRA r=8 alpha=16 q/k/v/o, batch {args.batch_size}, {args.steps} steps, lr {args.lr}, seed {args.seed}\n")
    runs: dict[str, list[dict]] = {"app": [], "baseline": []}
    for rep in range(args.reps):
        for side in (("app", "baseline") if rep % 2 == 0 else ("baseline", "app")):
            runs[side].append(spawn(side, args))
    ok = {side: [r for r in found if "error" not in r] for side, found in runs.items()}
    if ok["app"] and ok["baseline"]:
        app, base = ok["app"], ok["baseline"]
        ratio = summary(app, "useful_tps") / summary(base, "useful_tps")

        def row(label: str, key: str, fmt: str, ratio_of: bool = False) -> list[str]:
            a, b = summary(app, key), summary(base, key)
            return [label, format(b, fmt), format(a, fmt), f"{a / b:.2f}×" if ratio_of else ""]

        print("\n## App training path vs pad-to-max baseline\n")
        print(table(["measure", "baseline (pad to max, random)", "app (pad to longest, grouped)", "app / baseline"], [
            row("useful (non-padding) tokens/s", "useful_tps", ".0f", True),
            row("all tokens computed/s (padding included)", "all_tps", ".0f", True),
            row("non-padding tokens trained", "real_tokens", ".0f"),
            row("tokens computed (padding included)", "padded_tokens", ".0f", True),
            row("training seconds", "seconds", ".1f", True),
            row("median step seconds (first step excluded)", "step_median", ".2f", True),
            row("peak RSS (MB)", "rss_peak_mb", ".0f", True),
            row("final training loss, last step (see note)", "train_loss_last", ".3f"),
            row("training loss, mean over steps (see note)", "train_loss_mean", ".3f"),
            row("held-out answer-token loss before training", "heldout_before", ".3f"),
            row("held-out answer-token loss after training", "heldout_after", ".3f"),
        ]))
        print("\nnote: the app's training loss is over answer tokens only, the baseline's over all real tokens "
              "(prompt included), so only the held-out answer-token losses compare like with like.")
        print(f"\ngoal (app ≥ 1.3× baseline useful tokens/s): {'met' if ratio >= 1.3 else 'NOT met'} ({ratio:.2f}×)")

    if args.qlora_steps:
        print(f"\n## LoRA vs QLoRA ({args.qlora_steps} steps each, app data path, batch {args.batch_size})\n", flush=True)
        lora, qlora = spawn("lora", args, args.side_timeout), spawn("qlora", args, args.side_timeout)
        rows = []
        for label, key, fmt in (("model memory footprint (MB)", "footprint_mb", ".0f"),
                                ("RSS after loading (MB)", "rss_loaded_mb", ".0f"),
                                ("peak RSS (MB)", "rss_peak_mb", ".0f"),
                                ("median step seconds (first step excluded)", "step_median", ".2f"),
                                ("useful tokens/s", "useful_tps", ".0f"),
                                ("held-out answer-token loss after training", "heldout_after", ".3f")):
            values = [format(r[key], fmt) if "error" not in r else "failed" for r in (lora, qlora)]
            ratio_text = f"{qlora[key] / lora[key]:.2f}×" if "error" not in lora and "error" not in qlora else ""
            rows.append([label, *values, ratio_text])
        print(table(["measure", "LoRA (float32)", "QLoRA (NF4, fp32 compute)", "QLoRA / LoRA"], rows))
        if "error" in qlora:
            print(f"\nQLoRA failed: {qlora['error']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
