"""What each released optimizer option changes in one step, against the releases' own steps (issue 31).

For every fixture whose release step ends with an optimizer step (``tests/fixtures/released/*.safetensors``,
``released/after/*``), run dinolite's step with the release's optimizer options (the cases of
``tests/methods/released_cases.py``), then again with dinolite's value of one option at a time, and
print the largest difference of any parameter after the step from the release's (elements whose released
gradient is below the case's noise floor left out, as in the test), the tensor it is in, and how many
tensors the test's tolerance refuses.

    PYTHONPATH=. python benchmarks/released_optimizer_effects.py
"""

from __future__ import annotations

import torch

from tests.methods.released_cases import CASES, OPTIMIZER_CASES
from tests.methods.released_harness import (
    Fixture,
    ReleasedStep,
    after_step_mismatches,
    largest,
    read_fixture,
    run_optimizer_step,
)

# dinolite's value of each released option (what the option changes from)
DINOLITE = {
    "optimizer": "adamw",
    "decay_rule": "dinolite",
    "no_decay": "[]",
    "fixed_lr_modules": "[]",
    "clip_grad_scope": "per_module",
    "unclipped_modules": "[]",
    "lars_exclude_1d": "false",
    "lr_1d_mult": "1.0",
    "clip_grad": "3.0",
}


def worst(case: ReleasedStep, fixture: Fixture, ours: dict[str, torch.Tensor]) -> tuple[float, float, str]:
    """Largest ``|ours - released|`` after the step, that over the tensor's own step, and the tensor."""
    assert case.optimizer is not None
    before, grads = fixture.section("weights/"), fixture.section("released/grad/")
    best = (0.0, 0.0, "-")
    for key, released in fixture.section("released/after/").items():
        if not key.startswith("student.") or key in case.dinolite_only:
            continue
        kept = grads[key].abs() >= case.optimizer.noise_floor
        difference = largest((ours[key].double() - released.double()).abs()[kept])
        step = float((released.double() - before[key].double()).abs().max())
        if difference > best[0]:
            best = (difference, difference / step, key)
    return best


def main() -> None:
    print("| method | option set to dinolite's value | max after-step difference | of its step | tensor | refused |")
    print("|---|---|---|---|---|---|")
    for name in OPTIMIZER_CASES:
        case = CASES[name]
        fixture = read_fixture(case.fixture)
        assert case.optimizer is not None
        options = [None, *(key for key in case.optimizer.options(fixture.settings) if key in DINOLITE)]
        for option in options:
            instead = {} if option is None else {option: DINOLITE[option]}
            ours = run_optimizer_step(case, fixture, instead)
            difference, relative, key = worst(case, fixture, ours)
            refused = len(after_step_mismatches(case, fixture, ours))
            label = "none (the release's options)" if option is None else f"`{option}={DINOLITE[option]}`"
            print(f"| {name} | {label} | {difference:.2e} | {relative:.1e} | `{key}` | {refused} |")


if __name__ == "__main__":
    main()
