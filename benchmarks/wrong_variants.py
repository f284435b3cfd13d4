"""Item-7 evidence (issue 16): each wrong variant of a strategy passes the pre-existing strategy tests
but fails its test in tests/test_strategies_fidelity.py. Applies one variant at a time to the source,
runs the tests, restores the file. Run: PYTHONPATH=src python benchmarks/wrong_variants.py"""
import subprocess, sys, pathlib
root = pathlib.Path(__file__).resolve().parents[1]
V = {
 "hl_sigmoid_then_resize": ("src/hardseg/strategies/functional.py",
   "    s = resize_bilinear(hl_logits.float(), size, align_corners)\n    return torch.sigmoid(s[:, 0]) + offset",
   "    return resize_bilinear(torch.sigmoid(hl_logits.float()), size, align_corners)[:, 0] + offset",
   "test_hl_logits_are_resized_before_the_sigmoid"),
 "focal_softmax_detached_factor": ("src/hardseg/strategies/functional.py",
   "loss = (1 - logp.exp()).clamp(min=0).pow(gamma) * loss",
   "loss = (1 - logp.exp()).clamp(min=0).pow(gamma).detach() * loss",
   "test_focal_gradient_includes_the_modulating_factor"),
 "focal_sigmoid_detached_factor": ("src/hardseg/strategies/functional.py",
   "mod = (1 - torch.exp(-bce)).pow(gamma) if",
   "mod = (1 - torch.exp(-bce)).pow(gamma).detach() if",
   "test_focal_gradient_includes_the_modulating_factor"),
 "sr_demo_teacher_not_detached": ("src/hardseg/strategies/functional.py",
   "p_final = torch.sigmoid(final_presence.float()).detach()",
   "p_final = torch.sigmoid(final_presence.float())",
   "test_self_regulation_sr_l_teacher_is_detached"),
 "sr_paper_teacher_not_detached": ("src/hardseg/strategies/functional.py",
   "teacher = F.softmax(final_logits.detach().float() / tau, dim=1)",
   "teacher = F.softmax(final_logits.float() / tau, dim=1)",
   "test_self_regulation_sr_l_teacher_is_detached"),
 "c2f_prev_scores_detached": ("src/hardseg/strategies/coarse_to_fine.py",
   "resize_bilinear(prev, size, ac), skip]", "resize_bilinear(prev.detach(), size, ac), skip]",
   "test_coarse_to_fine_stage_inputs_carry_gradient"),
 "c2f_deep_detached": ("src/hardseg/strategies/coarse_to_fine.py",
   "torch.cat([resize_bilinear(deep, size, ac)", "torch.cat([resize_bilinear(deep.detach(), size, ac)",
   "test_coarse_to_fine_stage_inputs_carry_gradient"),
 "c2f_skip_detached": ("src/hardseg/strategies/coarse_to_fine.py",
   "resize_bilinear(prev, size, ac), skip]", "resize_bilinear(prev, size, ac), skip.detach()]",
   "test_coarse_to_fine_stage_inputs_carry_gradient"),
}
py = sys.executable
OLD = ["tests/test_strategies_functional.py", "tests/test_strategies_objective.py", "tests/test_strategies_models.py"]
for name, (path, old, new, test) in V.items():
    f = root / path
    text = f.read_text()
    assert text.count(old) == 1, (name, text.count(old))
    f.write_text(text.replace(old, new))
    try:
        o = subprocess.run([py, "-m", "pytest", "-q", "-p", "no:randomly", *OLD], cwd=root, capture_output=True, text=True)
        n = subprocess.run([py, "-m", "pytest", "-q", f"tests/test_strategies_fidelity.py::{test}" if "[" in test else "tests/test_strategies_fidelity.py", "-k", test], cwd=root, capture_output=True, text=True)
    finally:
        f.write_text(text)
    last = lambda r: r.stdout.strip().splitlines()[-1]
    err = [l for l in n.stdout.splitlines() if l.startswith("E ")][:2]
    print(f"## {name}: {path}: {old!r} -> {new!r}\n   old strategy tests: {last(o)}\n   new test {test}: {last(n)}")
    for l in err: print("     ", l[:200])
