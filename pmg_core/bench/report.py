"""The benchmark report as Markdown: the JSON report (run.run_bench) drawn as tables."""
from __future__ import annotations


def to_markdown(report: dict) -> str:
    c, d = report["config"], report["device"]
    lines = [f"# Benchmark: {c['arch']} on {d['name']} ({d['type']}, {d['threads']} threads)", "",
             f"Batch {c['batch_size']}, {c['classes']} classes, PGD {c['pgd_steps']} steps at eps "
             f"{c['eps_255']}/255 for training, {c['eval_steps']} for evaluation; median of {c['repeats']} "
             f"runs after {c['warmup']} warm-up, ours/reference/floor interleaved. Memory: {report['memory_kind']}."]
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
    return "\n".join(lines) + "\n"


def tflops_cell(r: dict) -> str:
    if "achieved_tflops" not in r:
        return "-"
    shares = [f"{r[k]:.0%}" for k in ("fraction_of_peak", "fraction_of_matmul") if k in r]
    return f"{r['achieved_tflops']:.1f}" + (f" ({', '.join(shares)})" if shares else "")
