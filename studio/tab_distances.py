"""The Feature distances tab: how far each model's embedding moves under attack, over a sweep of eps.

It attacks the first tab's image with the first tab's labels and settings (`AttackTab`).
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from . import one_image
from .model_choices import model_dropdown
from .safety import INTERACTIVE_GPU_S, gpu, interactive, safe
from .state import Studio
from .tab_attack import AttackTab


@dataclass
class DistancesTab:
    reference: gr.Dropdown  # the original model the others are measured from


def build(studio: Studio, attack: AttackTab) -> DistancesTab:
    with gr.Tab("Feature distances"):
        gr.Markdown("Uses the image, labels and attack settings of the first tab. Each model is attacked "
                    "itself at every eps; the projection shows the largest eps.")
        with gr.Row():
            dist_eps = gr.Textbox("0, 1, 2, 4, 8", label="eps sweep (/255)")
            reference = model_dropdown(studio.names, studio.names[0], "Reference (original) model")
            dist_btn = gr.Button("Compute distances", variant="primary")
        with gr.Row():
            dist_plot = gr.Plot(label="adversarial vs clean embedding")
            ref_plot = gr.Plot(label="distance from the original model")
        proj_plot = gr.Plot(label="2-D projection")
        dist_data = gr.JSON(visible=False)
    dist_btn.click(gpu(INTERACTIVE_GPU_S)(safe(one_image.distances, studio)),
                   [attack.image, attack.labels, attack.true_label, attack.norm, dist_eps, attack.steps,
                    attack.step_size, attack.loss, attack.chosen, reference],
                   [dist_plot, ref_plot, proj_plot, dist_data], api_name="distances", **interactive(studio.public))
    return DistancesTab(reference)
