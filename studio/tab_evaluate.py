"""The Evaluate tab: clean and robust zero-shot accuracy of the chosen models on a dataset or group."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from . import evaluation
from .model_choices import ModelChecklist
from .safety import JOB_GPU_S, JOBS, gpu, safe
from .state import Studio, pick_default


@dataclass
class EvaluateTab:
    models: gr.CheckboxGroup  # the models evaluated


def build(studio: Studio) -> EvaluateTab:
    limits, datasets, start = studio.limits, studio.dataset_choices(), studio.starting_attack()
    with gr.Tab("Evaluate"):
        with gr.Row():
            models = ModelChecklist(studio.names, value=studio.names, label="Models")
            dataset = gr.Dropdown(datasets, value=pick_default(datasets, "mini"),
                                  label="Dataset (a registered task or group)")
            folder = gr.Textbox("", label="...or an ImageFolder path on this machine", visible=studio.allow_folders,
                                placeholder="/data/my_images (one folder per class)")
        with gr.Row():
            eps = gr.Number(start.eps_255, label="eps (/255)", minimum=0, info=start.why)
            steps = gr.Number(start.steps, label="PGD steps", precision=0, minimum=0)
            step_size = gr.Number(start.step_255, label="Step size (/255, 0 = auto)", minimum=0)
            limit = gr.Number(100, label="samples per dataset", precision=0, minimum=1,
                              info=f"at most {limits.eval_samples:,}{limits.where}")
        with gr.Row():
            run_btn = gr.Button("Evaluate", variant="primary")
            cancel_btn = gr.Button("Cancel", variant="stop")
        status = gr.Markdown()
        table = gr.Dataframe(headers=["model", "dataset", "n", "clean %", "robust %", "seconds"],
                             label="Per dataset", interactive=False)
        plot = gr.Plot(label="Accuracy per dataset")

    def cancel(request: gr.Request) -> str:
        return studio.jobs.cancel("evaluate", request)

    run = run_btn.click(gpu(JOB_GPU_S)(safe(evaluation.evaluate, studio)),
                        [models, dataset, folder, eps, steps, step_size, limit], [status, table, plot],
                        api_name="evaluate", show_progress_on=[status], **JOBS)
    # Cancel takes a waiting run off the queue (cancels=) and stops a running one after its step (the flag).
    cancel_btn.click(safe(cancel), None, status, api_name="cancel_evaluate", queue=False, cancels=[run])
    return EvaluateTab(models)
