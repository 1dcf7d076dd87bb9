"""The benchmark report as Markdown: the JSON report (run.run_bench) drawn as tables."""
from __future__ import annotations


def to_markdown(report: dict) -> str:
    c, d = report["config"], report["device"]
    lines = [f"# Benchmark: {c['arch']} on {d['name']} ({d['type']}, {d['threads']} threads)", "",
             f"Batch {c['batch_size']}, {c['classes']} classes, PGD {c['pgd_steps']} steps at eps "
             f"{c['eps_255']}/255 for training, {c['eval_steps']} for evaluation; median of {c['repeats']} "
             f"runs after {c['warmup']} warm-up, ours/reference/floor interleaved. Memory: {report['memory_kind']}."
             + (f" Our training attack's passes: {report['training_attack']}." if report.get("training_attack") else "")]
    if d.get("matmul_bf16_tflops"):
        lines += ["", f"Achieved TFLOP/s = counted matmul/conv/attention FLOPs of our step / its time, against the "
                      f"datasheet dense bf16 peak ({d.get('peak_bf16_tflops') or 'unknown'}) and a measured bf16 "
                      f"8192^3 matmul ({d['matmul_bf16_tflops']})."]
    rows = {**report["methods"], "PGD alone": report.get("pgd"), "robust eval": report.get("eval")}
    rows = {k: v for k, v in rows.items() if v}
    if rows:
        lines += ["", "| step | ours img/s | reference img/s | floor img/s | ours / reference | floor / ours "
                      "| ours peak MiB (step's own) | reference peak MiB (step's own) | ours TFLOP/s (of peak, of matmul) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['ours']['images_per_s']:.2f} | {r['reference']['images_per_s']:.2f} | "
                     f"{r['floor']['images_per_s']:.2f} | {r['ratio_vs_reference']:.2f}x | "
                     f"{r['efficiency_vs_floor']:.2f} | {r['ours']['peak_memory_mib']:.0f} ({r['ours']['step_memory_mib']:.0f}) | "
                     f"{r['reference']['peak_memory_mib']:.0f} ({r['reference']['step_memory_mib']:.0f}) | "
                     f"{tflops_cell(r)} |")
    checks = {k: r["eager_vs_compiled"] for k, r in report["methods"].items() if "eager_vs_compiled" in r}
    for name, c in checks.items():
        lines += ["", f"torch.compile, {name}: same step as eager: {'yes' if c['same_step'] else 'NO'} (loss relative "
                      f"difference {c['loss_rel_diff']:.1e}, largest gradient difference {c['grad_max_abs_diff']:.1e}); "
                      f"step {c['compiled_step_s']:.3f} s compiled vs {c['eager_step_s']:.3f} s eager, first compiled "
                      f"step {c['compiled_first_step_s']:.1f} s."]
    es = report.get("eval_early_stop")
    if es:
        lines += ["", f"## Robust evaluation early stop: {es['model']} on {es['datasets']} "
                      f"({es['samples']} samples, PGD-{es['steps']}, eps {es['eps_255']}/255, "
                      f"step {es.get('step_size_255', es['eps_255'])}/255)", ""]
        if es.get("note"):
            lines += [f"Note: {es['note']}.", ""]
        lines += ["| variant | seconds | images/s | images in forwards (passes) | images in gradient passes (passes) "
                  "| clean correct | robust correct |", "|---|---:|---:|---:|---:|---:|---:|"]
        for k, label in (("early_stop", "early stop (ours)"), ("no_early_stop", "no early stop"),
                         ("attack_all", "attack every sample, every step")):
            v = es[k]
            lines.append(f"| {label} | {v['seconds']:.2f} | {v['images_per_s']:.1f} | {v['forward_images']} "
                         f"({v['forward_passes']}) | {v['gradient_images']} ({v['gradient_passes']}) | "
                         f"{v['clean_correct']} | {v['robust_correct']} |")
        lines += ["", f"Speed-up {es['speedup_vs_attack_all']:.2f}x over attacking everything "
                      f"(the pass counts allow {es['pass_speedup_vs_attack_all']:.2f}x, a gradient pass costing "
                      f"{es['grad_pass_cost']:.2f} forwards), {es['speedup_vs_no_early_stop']:.2f}x over no early "
                      f"stop; same accuracy: {'yes' if es['same_accuracy'] else 'NO'}."]
    app = report.get("app")
    if app:
        lines += ["", f"## The app's live comparison: {len(app['models'])} x {app['arch']} (random init), one 224 px "
                      f"image, PGD-{app['steps']} at eps {app['eps_255']}/255, {app['threads']} threads"
                      + _load_words(app.get("load_average")),
                  "",
                  "| path | first verdict s | all verdicts s | first verdict, vs today | all, vs today | steps taken |",
                  "|---|---:|---:|---:|---:|---|"]
        for k, label in (("todays_path", "today's (all at the end)"), ("streamed", "streamed, no margin"),
                         ("streamed_with_margin", f"streamed, stop margin {app['stop_margin']:g}"),
                         ("streamed_in_lanes", f"streamed, stop margin {app['stop_margin']:g}, "
                                               f"{app.get('lanes', 1)} models at once"),
                         ("in_lanes_with_maps_and_radius", "the same, then maps and robustness radii (all = the last)"),
                         ("app_default", "the app's defaults: the same, "
                                         f"{'/'.join(app.get('app_default', {}).get('precision', []))} passes")):
            if k not in app:  # a report written before lanes existed
                continue
            v = app[k]
            steps = ", ".join(f"{m} {n}" for m, n in v.get("steps_taken", {}).items()) or "all"
            lines.append(f"| {label} | {v['first_verdict_s']:.2f} | {v['all_verdicts_s']:.2f} | "
                         f"{v.get('first_verdict_speedup', 1):.2f}x | {v.get('all_verdicts_speedup', 1):.2f}x | {steps} |")
        lanes = app.get("same_right_wrong_in_lanes")
        lines += ["", f"Same verdicts without a margin: {'yes' if app['same_verdicts'] else 'NO'}; same right/wrong "
                      f"marks with it: {'yes' if app['same_right_wrong_with_margin'] else 'NO'}"
                      + ("" if lanes is None else f"; and in lanes: {'yes' if lanes else 'NO'}") + "."]
        if "app_default" in app:
            d = app["app_default"]
            lines += ["", f"The app's defaults give the same right/wrong marks as today's fp32 path for "
                          f"{d['right_wrong_as_today']} of {len(app['models'])} models. One gradient pass of one model "
                          f"(one image): {app['pass_s']['fp32']:.3f} s in fp32, {app['pass_s']['bf16']:.3f} s under "
                          f"bf16 autocast. Load average (1, 5, 15 min) before: "
                          f"{', '.join(f'{v:g}' for v in app['load_average']['before'])}; after: "
                          f"{', '.join(f'{v:g}' for v in app['load_average']['after'])}."]
    return "\n".join(lines) + "\n"


def tflops_cell(r: dict) -> str:
    if "achieved_tflops" not in r:
        return "-"
    shares = [f"{r[k]:.0%}" for k in ("fraction_of_peak", "fraction_of_matmul") if k in r]
    return f"{r['achieved_tflops']:.1f}" + (f" ({', '.join(shares)})" if shares else "")


def _load_words(load) -> str:
    """How busy the machine was: the load average before and after the run (older reports: one reading)."""
    if isinstance(load, dict):
        return f"; load average {', '.join(map(str, load['before']))} before, {', '.join(map(str, load['after']))} after"
    return f"; load average {', '.join(map(str, load))}" if load else ""
