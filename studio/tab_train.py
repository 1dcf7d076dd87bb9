"""The Train tab: a short fine-tune of a loaded model, live loss curves, Cancel; the checkpoint joins the lists."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from pmg_core.data.datasets import list_datasets
from pmg_core.training.methods import list_methods

from . import training
from .model_choices import model_dropdown
from .safety import JOB_GPU_S, JOBS, gpu, safe
from .state import Studio, pick_default


@dataclass
class TrainTab:
    base: gr.Dropdown  # the model a run starts from
    run: gr.events.Dependency  # a run, and its Cancel: the model lists are refreshed after each
    cancel: gr.events.Dependency


def build(studio: Studio) -> TrainTab:
    limits, datasets, start = studio.limits, [d.name for d in list_datasets()], studio.starting_attack()
    with gr.Tab("Train"):
        with gr.Row():
            base = model_dropdown(studio.names, studio.names[0], "Start from")
            method = gr.Dropdown(list_methods(), value="pmg-aft", label="Method")
            dataset = gr.Dropdown(datasets, value=pick_default(datasets, "synth-finetune"), label="Training set")
            name = gr.Textbox("my-pmg-aft", label=f"Checkpoint name (saved in {studio.checkpoint_dir.name}/)")
        with gr.Row():
            eps = gr.Number(start.eps_255, label="eps (/255)", minimum=0, info=start.why)
            attack_steps = gr.Number(2, label="PGD steps", precision=0, minimum=0)
            lr = gr.Number(0.01, label="learning rate")
            steps = gr.Number(50, label="training steps", precision=0, minimum=1,
                              info=f"at most {limits.train_steps:,}{limits.where}")
            batch = gr.Number(32, label="batch size", precision=0, minimum=1)
            alpha = gr.Number(1.0, label="alpha (stay near the original)")
            beta = gr.Number(1.0, label="beta (clean/adversarial consistency)")
        with gr.Row():
            run_btn = gr.Button("Train", variant="primary")
            cancel_btn = gr.Button("Cancel", variant="stop")
        status = gr.Markdown()
        plot = gr.Plot(label="Loss and accuracy")

    def cancel(request: gr.Request) -> str:
        return studio.jobs.cancel("train", request)

    run = run_btn.click(gpu(JOB_GPU_S)(safe(training.train, studio)),
                        [base, method, dataset, eps, attack_steps, lr, steps, batch, alpha, beta, name],
                        [status, plot], api_name="train", **JOBS)
    # Cancel takes a waiting run off the queue (cancels=) and stops a running one after its step (the flag).
    cancelled = cancel_btn.click(safe(cancel), None, status, api_name="cancel_train", queue=False, cancels=[run])
    return TrainTab(base, run, cancelled)
