"""The Attack & compare tab: upload or pick an image, attack it, compare every model's top-5.

Its image, labels and attack settings are also the Feature distances tab's inputs, so `build`
returns them in `AttackTab`.
"""
from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from pmg_core.data import inputs
from pmg_core.attacks.pgd import NORMS
from pmg_core.core.errors import UserError
from pmg_core.evaluation.explore import RADIUS_HIGH_255, RADIUS_TOLERANCE_255, radius_attacks

from . import assets, one_image, share
from .model_choices import DefenseChoice, ModelChecklist, model_dropdown
from .safety import INTERACTIVE_GPU_S, PREVIEWS_AT_ONCE, gpu, image_upload, interactive, safe, skips_pass_over
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
    defend: gr.Radio
    stop_early: gr.Checkbox
    with_maps: gr.Checkbox
    with_radius: gr.Checkbox
    attack_btn: gr.Button
    hint: gr.HTML  # the sentence beside the button when there is no image
    examples: gr.Gallery | None  # the strip of examples under the image


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
    maps: gr.HTML  # the grid of where each model looks
    radius_plot: gr.Plot
    zip_file: gr.File
    shown: gr.State  # the last comparison of this session: what the extras start from
    share_row: gr.Row  # the share button and its link, once there is a comparison to share
    share_btn: gr.Button
    link: gr.Textbox
    images_row: gr.Row  # the adversarial images, the files and the details: hidden until a first comparison
    files_row: gr.Row
    details_box: gr.Accordion


def build(studio: Studio, demo: gr.Blocks) -> AttackTab:
    """The tab, and its share links: `demo`'s page load applies a link's settings and runs them."""
    presets = studio.presets()
    examples = assets.examples(presets)
    with gr.Tab("Attack & compare"):
        # On a phone the two columns stack; assets/studio.css then puts the settings between the
        # button and the results (pmg-left's children join the row, the settings column before the results).
        with gr.Row(equal_height=False, elem_id="pmg-attack-layout"):
            with gr.Column(scale=3, min_width=320, elem_id="pmg-left"):  # image, examples, Attack, what came of it
                tab, own = _image_and_button(studio, presets, examples)
                with gr.Column(elem_id="pmg-results"):
                    res = _results_column()
            with gr.Column(scale=2, min_width=300, elem_id="pmg-settings"):
                _settings_column(studio, presets, tab, own)

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

    def on_example(evt: gr.SelectData):
        """An example's image, labels and true label, and at once what the models see of it."""
        path, labels, true = examples[evt.index]
        classes = labels.split(", ")
        preset = next((name for name, c in presets.items() if c == classes), None)
        return (path, labels, gr.update(choices=classes, value=true), gr.update(choices=["", *classes], value=""),
                preset if preset else gr.skip(), one_image.preview(studio, path), "")

    # .input, not .change: an example sets the preset too, and must keep its own true label
    own.preset.input(on_preset, own.preset, [tab.labels, tab.true_label, own.target], api_name="preset", queue=False)
    tab.labels.change(on_labels, tab.labels, [tab.true_label, own.target], api_name="labels", queue=False)
    tab.image.change(safe(one_image.preview, studio), tab.image, own.seen, api_name="preview",
                     show_progress="minimal", concurrency_id="preview", concurrency_limit=PREVIEWS_AT_ONCE)
    if own.examples is not None:
        own.examples.select(safe(on_example), None, [tab.image, tab.labels, tab.true_label, own.target, own.preset,
                                                     own.seen, own.hint], api_name="example", queue=False)
    settings = [tab.image, tab.labels, tab.true_label, tab.norm, own.eps, tab.steps, tab.step_size, tab.loss,
                own.target, tab.source, tab.chosen]
    # Nothing to attack: a sentence beside the button, and the outputs stay as they were (no error badges).
    own.attack_btn.click(one_image.no_image_hint, tab.image, own.hint, queue=False, api_visibility="private")
    # The verdicts appear under the button at a desk; on a phone they start below the settings, so the
    # page scrolls down to them (never up; not without an image, whose hint is beside the button).
    own.attack_btn.click(None, js=_RESULTS_TO_TOP_ON_A_PHONE)
    attacked = own.attack_btn.click(
        gpu(INTERACTIVE_GPU_S)(safe(attack, studio)), [*settings, own.defend, own.stop_early],
        [res.adv_gallery, res.pert_gallery, res.verdicts, res.adv_files, res.details, res.shown],
        api_name="attack", show_progress="minimal", **interactive(studio.public))
    attacked.success(gpu(INTERACTIVE_GPU_S)(safe(extras, studio)), [res.shown, own.with_maps, own.with_radius],
                     [res.maps, res.radius_plot, res.zip_file, res.details, res.verdicts], api_name="attack_extras",
                     show_progress="hidden", **interactive(studio.public))
    # A new comparison: its link is made afresh on request, the old one no longer stands for the page.
    # What had nothing to show before the first comparison appears with it (the API's outputs stay plain values).
    def show_results():
        return (*[gr.update(visible=True)] * 4, "")

    attacked.success(show_results, None, [res.images_row, res.files_row, res.details_box, res.share_row, res.link],
                     queue=False, api_visibility="private")
    _share_links(studio, demo, examples, presets, tab, own, res)
    sweep_settings = [res.sweep_eps if c is own.eps else c for c in settings]  # the sweep's radii replace eps
    res.sweep_btn.click(gpu(INTERACTIVE_GPU_S)(safe(one_image.eps_sweep, studio)), sweep_settings,
                        [res.sweep_plot, res.sweep_rows], api_name="eps_sweep", **interactive(studio.public))
    return tab


def _share_links(studio: Studio, demo: gr.Blocks, examples: list[list], presets: dict[str, list[str]],
                 tab: AttackTab, own: _Settings, res: _Results) -> None:
    """Share this comparison: the button writes a link to the page's comparison (share.py); a page
    opened from one takes its settings and presses Attack."""
    def make_link(result, with_maps, with_radius, request: gr.Request = None) -> str:
        return share.link_query(studio, result, examples, with_maps, with_radius, request)

    res.share_btn.click(safe(make_link), [res.shown, own.with_maps, own.with_radius],
                        res.link, api_visibility="private", concurrency_id="preview").then(
        None, res.link, res.link, js="(q) => q ? window.location.origin + window.location.pathname + q : ''")

    fields = [tab.image, own.preset, tab.labels, tab.true_label, own.target, own.eps, tab.steps, tab.step_size,
              tab.norm, tab.loss, tab.source, tab.chosen, own.defend, own.stop_early, own.with_maps, own.with_radius,
              own.hint]

    # A page not opened from a link keeps the image as it is: a visitor may have uploaded one before this
    # answer arrives. Where Gradio would rebuild a skipped output (skips_pass_over is False), that
    # would replace the session's copy of the component and, with it, image_upload's own preprocess, so
    # the image is then given a plain value (None) instead.
    def open_link(request: gr.Request):
        as_it_is = gr.skip() if skips_pass_over(demo) else None
        try:
            link = share.link_settings(studio, dict(request.query_params), examples)
        except UserError as e:  # an expired upload, an example this app lacks: said beside the button
            return (as_it_is, *[gr.skip()] * (len(fields) - 2), f"<p class='pmg-hint'>{html.escape(str(e))}</p>")
        if link is None:  # not opened from a link
            return (as_it_is, *[gr.skip()] * (len(fields) - 1))
        classes = link["classes"]
        missing = (f"<p class='pmg-hint'>This link also compares {', '.join(map(html.escape, link['missing']))}, "
                   "not loaded here.</p>") if link["missing"] else ""
        number = lambda v: gr.skip() if v is None else v  # noqa: E731 - a value the link leaves out stays as it is
        return (link["image"], link["preset"] if link["preset"] in presets else gr.skip(), link["labels"],
                gr.update(choices=classes, value=link["true_label"]), gr.update(choices=["", *classes],
                                                                                value=link["target"]),
                number(link["eps"]), number(link["steps"]), number(link["step_size"]), link["norm"] or gr.skip(),
                link["loss"] or gr.skip(), link["source"], link["models"], link["defend"], link["stop_early"],
                link["with_maps"], link["with_radius"], missing)

    # Attack is pressed for a page opened from a link, not for an image the visitor uploaded meanwhile.
    demo.load(open_link, None, fields, api_visibility="private", queue=False).then(
        None, tab.image, None, js="(image) => { const q = new URLSearchParams(window.location.search); "
                                  "if (image && (q.has('example') || q.has('image'))) "
                                  "document.querySelector('#pmg-attack')?.click(); }")


def attack(studio: Studio, image, labels, true_label, norm, eps_255, steps, step_size_255, loss, target, source,
           model_names, defend: bool | str = False, stop_early: bool = True, request: gr.Request = None):
    """one_image.attack_stream for Gradio: each model's verdict as it arrives, a progress line between;
    the last update also fills the session's state the extras start from. No image: nothing changes
    (the button's other listener says why), and the extras have nothing to start from. Gradio fills
    `request` (on a public server each pass waits for its visitor's turn, counted against their budget)."""
    if not image:
        yield (gr.skip(),) * 5 + (None,)
        return
    result: dict = {}
    for outputs in one_image.attack_stream(studio, image, labels, true_label, norm, eps_255, steps, step_size_255, loss,
                                           target, source, model_names, defend, stop_early, result, request):
        yield tuple(gr.skip() if o is one_image.UNCHANGED else o for o in outputs) + (result or gr.skip(),)


def extras(studio: Studio, result, with_maps: bool, with_radius: bool, request: gr.Request = None):
    """one_image.extras for Gradio: the maps' grid and the radius chart are shown only when they hold something."""
    for grid, chart, zipped, details, table in one_image.extras(studio, result, with_maps, with_radius, request):
        yield (gr.update(value=grid, visible=bool(grid)),
               gr.skip() if chart is one_image.UNCHANGED else gr.update(value=chart, visible=chart is not None),
               *(gr.skip() if o is one_image.UNCHANGED else o for o in (zipped, details, table)))


def _image_and_button(studio: Studio, presets: dict[str, list[str]], examples: list[list]) -> tuple[AttackTab, _Settings]:
    """The first screen: the image and what the models see of it, a strip of examples, the Attack button.
    The settings' components are made here too (unrendered) and placed by _settings_column."""
    first_preset = next(iter(presets), None)
    default_labels = ", ".join(presets[first_preset]) if first_preset else "cat, dog, bird"
    # every preset's classes, so examples from any task show their true label
    all_classes = list(dict.fromkeys(c for classes in presets.values() for c in classes)) or default_labels.split(", ")
    with gr.Row(equal_height=True):
        image = image_upload(label="Image", sources=["upload", "clipboard"], height=150, min_width=140,
                             elem_classes="pmg-pixelated", elem_id="pmg-image")
        seen = gr.Image(label="What the models see", format="png", interactive=False, height=150, min_width=140,
                        elem_classes="pmg-pixelated", elem_id="pmg-preview", buttons=[])
    strip = None
    if examples:
        photos = any(not e[0].startswith(str(assets.EXAMPLES_DIR)) for e in examples)
        strip = gr.Gallery([e[0] for e in examples], label="Examples", show_label=False, columns=len(examples),
                           rows=1, height=76, allow_preview=False, object_fit="contain", buttons=[],
                           elem_id="pmg-examples", elem_classes=["pmg-pixelated", "pmg-examples"])
        if photos:
            gr.Markdown(assets.PHOTO_CREDITS, elem_classes="pmg-small")
    with gr.Row(equal_height=True, elem_id="pmg-action"):
        attack_btn = gr.Button("Attack", variant="primary", elem_id="pmg-attack", scale=0, min_width=140)
        hint = gr.HTML("", elem_id="pmg-hint")
    labels = gr.Textbox(default_labels, label="Class labels (comma-separated)", lines=2, max_lines=6, render=False)
    true_label = gr.Dropdown(all_classes, value=default_labels.split(", ")[0], allow_custom_value=True,
                             label="True label", render=False)
    norm = gr.Radio(list(NORMS), value="Linf", label="Norm", render=False)
    start = studio.starting_attack()
    steps = gr.Number(start.steps, label="PGD steps", precision=0, minimum=0, render=False)
    step_size = gr.Number(start.step_255, label="Step size (/255, 0 = auto)", minimum=0, render=False)
    loss = gr.Radio(list(one_image.LOSSES), value="cross-entropy", label="Attack loss", render=False)
    chosen = ModelChecklist(studio.names, value=studio.names, label="Models to compare", render=False)
    source = model_dropdown([one_image.EACH_MODEL, *studio.names], one_image.EACH_MODEL, "Who is attacked",
                            info="Each model white-box, or one model's adversarial image transferred to all.",
                            render=False)
    own = _Settings(
        preset=gr.Dropdown(list(presets), value=first_preset, label="Label preset", render=False),
        seen=seen,
        target=gr.Dropdown(["", *default_labels.split(", ")], value="", allow_custom_value=True,
                           label="Target class (optional: targeted attack)", render=False),
        eps=gr.Number(start.eps_255, label="eps (/255)", minimum=0, info=start.why, elem_id="pmg-eps", render=False),
        defend=DefenseChoice(list(one_image.DEFENSES), value="no", label="Defend at test time", elem_id="pmg-defend",
                        render=False,
                        info="Also show each model behind a test-time defense: TTC counterattacks the image (Xing et "
                             "al., CVPR 2025), CLIPure moves its embedding towards a blank prompt's (Zhang et al., ICLR "
                             "2025); on the same adversarial image, and attacked through the defense (slower)."),
        stop_early=gr.Checkbox(True, label="Stop attacking a model once it is clearly fooled", elem_id="pmg-stop-early",
                               render=False,
                               info=f"Faster: a model is done once the wrong class leads by {one_image.STOP_MARGIN:g} "
                                    "logit and its PNG still fools it; its verdict says after how many steps."),
        with_maps=gr.Checkbox(True, label="Show where each model looks", elem_id="pmg-with-maps", render=False,
                              info="Attention to the true and the predicted class, and saliency, on the clean and "
                                   "the adversarial image; after the verdicts, so they come no later."),
        with_radius=gr.Checkbox(False, label="Find each model's robustness radius", elem_id="pmg-with-radius",
                                render=False,
                                info=f"The smallest eps that changes its answer: bisection over PGD (the steps above, "
                                     f"0 to {RADIUS_HIGH_255:g}/255, to within {RADIUS_TOLERANCE_255:g}/255); up to "
                                     f"{radius_attacks()} more attacks per model, after the verdicts."),
        attack_btn=attack_btn, hint=hint, examples=strip)
    return AttackTab(image, labels, true_label, norm, steps, step_size, loss, chosen, source), own


def _settings_column(studio: Studio, presets: dict[str, list[str]], tab: AttackTab, own: _Settings) -> None:
    """Beside the image: the everyday settings, then the rest in an Advanced accordion."""
    own.preset.render()
    tab.labels.render()
    tab.true_label.render()
    with gr.Row():
        own.eps.render()
        tab.steps.render()
    tab.chosen.render()
    own.with_maps.render()
    own.with_radius.render()
    with gr.Accordion("Advanced", open=False, elem_id="pmg-advanced"):
        with gr.Row():
            tab.norm.render()
            tab.loss.render()
        with gr.Row():
            own.target.render()
            tab.step_size.render()
        tab.source.render()
        own.stop_early.render()
        own.defend.render()
    gr.Markdown(SEEN_BY_MODELS, elem_classes="pmg-small")
    if studio.model_notes():  # the findings live on the About tab; one line here leads there
        gr.Button("What the mini benchmark found about these models: on the About tab", size="sm",
                  variant="secondary", elem_id="pmg-findings-link").click(None, js=_TO_ABOUT)


# (The results may be too short yet for the page to scroll that far: they get a screen's height first.)
_RESULTS_TO_TOP_ON_A_PHONE = ("() => { const r = document.querySelector('#pmg-results'); "
                              "if (!r || window.innerWidth >= 700 || !document.querySelector('#pmg-image img')) return; "
                              "r.style.minHeight = window.innerHeight + 'px'; const top = r.getBoundingClientRect().top; "
                              "if (top > 8) window.scrollBy(0, top - 8); }")
_TO_ABOUT = ("() => [...document.querySelectorAll('button[role=tab]')]"
             ".find(b => b.innerText.trim() === 'About')?.click()")


def _results_column() -> _Results:
    """Under the button: the verdicts (with the progress line and their summary), the share link, the
    radius chart, the maps, the adversarial images and their files, one zip, the details, the eps sweep.
    Each appears once it has something to show."""
    verdicts = gr.HTML(label="Predictions", elem_id="pmg-verdicts")
    with gr.Row(visible=False, elem_id="pmg-share", equal_height=True) as share_row:
        share_btn = gr.Button("Share this comparison", size="sm", scale=0, min_width=180, elem_id="pmg-share-button")
        link = gr.Textbox("", show_label=False, placeholder="a link that opens this comparison again", buttons=["copy"],
                          interactive=False, elem_id="pmg-link", scale=1)
    radius_plot = gr.Plot(label="Robustness radius", show_label=False, elem_id="pmg-radius", format="png",
                          visible=False)  # the chart carries its own title
    maps = gr.HTML("", elem_id="pmg-maps", visible=False)
    with gr.Row(visible=False) as images_row:
        adv_gallery = gr.Gallery(label="Adversarial images", format="png", columns=3,
                                 height="auto", elem_classes=["pmg-pixelated", "pmg-gallery"], object_fit="contain",
                                 elem_id="pmg-adversarial")
        pert_gallery = gr.Gallery(label="Perturbations, amplified", format="png", columns=3,
                                  height="auto", elem_classes=["pmg-pixelated", "pmg-gallery"], object_fit="contain",
                                  elem_id="pmg-perturbation")
    with gr.Row(visible=False) as files_row:
        zip_file = gr.File(label="Download the comparison (zip: details, PNGs, maps, radius chart)",
                           elem_id="pmg-zip")
        adv_files = gr.File(label="Adversarial PNGs, one per model attacked (bit-exact)", file_count="multiple",
                            elem_id="pmg-files")
    with gr.Accordion("Details (JSON)", open=False, visible=False) as details_box:
        details = gr.JSON(elem_id="pmg-details")
    with gr.Accordion("eps sweep", open=False):
        with gr.Row():
            sweep_eps = gr.Textbox("0, 1, 2, 4, 8", label="eps sweep (/255)")
            sweep_btn = gr.Button("Run eps sweep")
        sweep_plot = gr.Plot(label="eps sweep")
    sweep_rows = gr.JSON(visible=False)
    return _Results(verdicts, adv_gallery, pert_gallery, adv_files, details, sweep_eps, sweep_btn, sweep_plot,
                    sweep_rows, maps, radius_plot, zip_file, gr.State(None), share_row, share_btn, link, images_row,
                    files_row, details_box)
