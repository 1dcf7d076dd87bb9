"""The Attack & compare tab: upload or pick an image, attack it, compare every model's top-5.

Its image, labels and attack settings are also the Feature distances tab's inputs, so `build`
returns them in `AttackTab`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import gradio as gr

from pmg_core import inputs
from pmg_core.attacks import NORMS
from pmg_core.errors import UserError

from . import assets, one_image
from .safety import INTERACTIVE_GPU_S, gpu, image_upload, interactive, safe
from .state import Studio

SEEN_BY_MODELS = (f"What the models see: the image is center-cropped to a square and scaled to at most "
                  f"{one_image.ATTACK_SIDE} px before it is attacked.")


@dataclass
class AttackTab:
    """What the other tabs read or refresh: the image and attack settings, and the model choices."""

    image: gr.Image
    labels: gr.Textbox
    true_label: gr.Dropdown
    norm: gr.Radio
    steps: gr.Number
    step_size: gr.Number
    loss: gr.Radio
    chosen: gr.CheckboxGroup  # the models compared
    source: gr.Dropdown  # who is attacked: each model, or one whose image is transferred


@dataclass
class _Settings:
    """The settings column's components that only this tab's events use."""

    preset: gr.Dropdown
    seen: gr.Image  # the image as the models see it
    target: gr.Dropdown
    eps: gr.Number
    defend: gr.Checkbox
    stop_early: gr.Checkbox
    attack_btn: gr.Button


@dataclass
class _Results:
    verdicts: gr.HTML
    adv_gallery: gr.Gallery
    pert_gallery: gr.Gallery
    adv_files: gr.File
    details: gr.JSON
    sweep_eps: gr.Textbox
    sweep_btn: gr.Button
    sweep_plot: gr.Plot
    sweep_rows: gr.JSON


def build(studio: Studio) -> AttackTab:
    presets = studio.presets()
    with gr.Tab("Attack & compare"):
        with gr.Row():
            with gr.Column(scale=1):
                tab, own = _settings_column(studio, presets)
            with gr.Column(scale=2):
                res = _results_column()
        examples = assets.examples(presets)
        if examples:
            photos = any(not e[0].startswith(str(assets.EXAMPLES_DIR)) for e in examples)
            gr.Examples(examples, [tab.image, tab.labels, tab.true_label],
                        label="Examples: photos and the embedded world" if photos else "Examples from the embedded world")
            if photos:
                gr.Markdown(assets.PHOTO_CREDITS)

    def on_preset(name):
        classes = presets.get(name, [])
        return (", ".join(classes), gr.update(choices=classes, value=classes[0] if classes else None),
                gr.update(choices=["", *classes], value=""))

    def on_labels(text):
        try:
            classes = inputs.parse_labels(text)
        except UserError:
            return gr.update(), gr.update()
        return gr.update(choices=classes), gr.update(choices=["", *classes])

    own.preset.change(on_preset, own.preset, [tab.labels, tab.true_label, own.target], api_name="preset", queue=False)
    tab.labels.change(on_labels, tab.labels, [tab.true_label, own.target], api_name="labels", queue=False)
    tab.image.change(safe(one_image.preview, studio), tab.image, own.seen, api_name="preview",
                     show_progress="minimal", concurrency_id="preview", concurrency_limit=2)
    settings = [tab.image, tab.labels, tab.true_label, tab.norm, own.eps, tab.steps, tab.step_size, tab.loss,
                own.target, tab.source, tab.chosen]
    own.attack_btn.click(gpu(INTERACTIVE_GPU_S)(safe(attack, studio)), [*settings, own.defend, own.stop_early],
                         [res.adv_gallery, res.pert_gallery, res.verdicts, res.adv_files, res.details],
                         api_name="attack", show_progress="minimal", **interactive(studio.public))
    sweep_settings = [res.sweep_eps if c is own.eps else c for c in settings]  # the sweep's radii replace eps
    res.sweep_btn.click(gpu(INTERACTIVE_GPU_S)(safe(one_image.eps_sweep, studio)), sweep_settings,
                        [res.sweep_plot, res.sweep_rows], api_name="eps_sweep", **interactive(studio.public))
    return tab


@functools.wraps(one_image.attack_stream, assigned=("__annotations__",))  # its signature: Gradio fills its gr.Request
def attack(*fields, **named):
    """one_image.attack_stream for Gradio: each model's verdict as it arrives, a progress line between."""
    for outputs in one_image.attack_stream(*fields, **named):
        yield tuple(gr.skip() if o is one_image.UNCHANGED else o for o in outputs)


def _settings_column(studio: Studio, presets: dict[str, list[str]]) -> tuple[AttackTab, _Settings]:
    """The image, its labels and the attack settings."""
    first_preset = next(iter(presets), None)
    default_labels = ", ".join(presets[first_preset]) if first_preset else "cat, dog, bird"
    # every preset's classes, so examples from any task show their true label
    all_classes = list(dict.fromkeys(c for classes in presets.values() for c in classes)) or default_labels.split(", ")
    with gr.Row():
        image = image_upload(label="Image", sources=["upload", "clipboard"], height=220,
                             elem_classes="pmg-pixelated", elem_id="pmg-image")
        seen = gr.Image(label="What the models see", format="png", interactive=False, height=220,
                        elem_classes="pmg-pixelated", elem_id="pmg-preview", buttons=[])
    gr.Markdown(SEEN_BY_MODELS)
    preset = gr.Dropdown(list(presets), value=first_preset, label="Label preset")
    labels = gr.Textbox(default_labels, label="Class labels (comma-separated)", lines=2, max_lines=6)
    with gr.Row():
        true_label = gr.Dropdown(all_classes, value=default_labels.split(", ")[0],
                                 allow_custom_value=True, label="True label")
        target = gr.Dropdown(["", *default_labels.split(", ")], value="", allow_custom_value=True,
                             label="Target class (optional: targeted attack)")
    with gr.Row():
        norm = gr.Radio(list(NORMS), value="Linf", label="Norm")
        loss = gr.Radio(list(one_image.LOSSES), value="cross-entropy", label="Attack loss")
    with gr.Row():
        eps = gr.Number(4, label="eps (/255)", minimum=0)
        steps = gr.Number(10, label="PGD steps", precision=0, minimum=0)
        step_size = gr.Number(1, label="Step size (/255, 0 = auto)", minimum=0)
    source = gr.Dropdown([one_image.EACH_MODEL, *studio.names], value=one_image.EACH_MODEL, label="Who is attacked",
                         info="Each model white-box, or one model's adversarial image transferred to all.")
    chosen = gr.CheckboxGroup(studio.names, value=studio.names, label="Models to compare")
    notes = studio.model_notes()
    if notes:
        gr.Markdown(f"**About these models.** {notes}", elem_id="pmg-model-notes")
    defend = gr.Checkbox(False, label="Defend at test time (TTC)", elem_id="pmg-defend",
                         info="Also show each model behind a test-time counterattack (Xing et al., CVPR 2025): on the "
                              "same adversarial image, and attacked through the defense (slower).")
    stop_early = gr.Checkbox(True, label="Stop attacking a model once it is clearly fooled",
                             info=f"Faster: a model is done once the wrong class leads by {one_image.STOP_MARGIN:g} "
                                  "logit and its PNG still fools it; its verdict says after how many steps.")
    attack_btn = gr.Button("Attack", variant="primary", elem_id="pmg-attack")
    return (AttackTab(image, labels, true_label, norm, steps, step_size, loss, chosen, source),
            _Settings(preset, seen, target, eps, defend, stop_early, attack_btn))


def _results_column() -> _Results:
    """The verdicts, the adversarial images and their files, the details, the eps sweep."""
    verdicts = gr.HTML(label="Predictions", elem_id="pmg-verdicts")
    with gr.Row():
        adv_gallery = gr.Gallery(label="Adversarial image(s)", format="png", columns=3, height=260,
                                 elem_classes=["pmg-pixelated", "pmg-gallery"], object_fit="contain")
        pert_gallery = gr.Gallery(label="Perturbation, amplified", format="png", columns=3, height=260,
                                  elem_classes=["pmg-pixelated", "pmg-gallery"], object_fit="contain")
    adv_files = gr.File(label="Download adversarial PNG (bit-exact)", file_count="multiple", elem_id="pmg-files")
    with gr.Accordion("Details (JSON)", open=False):
        details = gr.JSON()
    with gr.Row():
        sweep_eps = gr.Textbox("0, 1, 2, 4, 8", label="eps sweep (/255)")
        sweep_btn = gr.Button("Run eps sweep")
    sweep_plot = gr.Plot(label="eps sweep")
    sweep_rows = gr.JSON(visible=False)
    return _Results(verdicts, adv_gallery, pert_gallery, adv_files, details, sweep_eps, sweep_btn, sweep_plot, sweep_rows)
