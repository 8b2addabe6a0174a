"""pipeline.memory: after keep_freed_memory, repeated forwards reuse their activations' pages instead of
faulting in fresh ones (glibc otherwise mmaps every block above 32 MB afresh)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    from pipeline.hardware import keep_freed_memory

    torch.set_num_threads(1)
    net = torch.nn.Sequential(torch.nn.Conv3d(3, 48, 1), torch.nn.ReLU(), torch.nn.Conv3d(48, 48, 1)).eval()
    clip = torch.rand(1, 3, 16, 128, 128)  # activations of 48 MB each, above glibc's largest mmap threshold
    changed = keep_freed_memory() if sys.argv[1] == "keep" else False

    @torch.inference_mode()
    def faults_of_a_forward():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        net(clip)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    print(json.dumps({"changed": changed, "faults": [faults_of_a_forward() for _ in range(16)]}))
    """
)


def page_faults(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_repeated_forwards_reuse_freed_activation_memory():
    activation_pages = 48 * 16 * 128 * 128 * 4 // 4096
    default = page_faults("default")
    kept = page_faults("keep")
    assert default["changed"] is False and kept["changed"] is True
    assert min(default["faults"][-3:]) > activation_pages  # every forward faults its activations in again
    # steady state: the heap's pages are reused. The heap may take a few forwards to settle (measured: 4 to 8
    # here), and the kernel's proactive reclaim (DAMON) may take idle heap pages back now and then, so the
    # last 8 of 16 forwards are read as a whole: mostly free of faults, and far below the default's
    last = kept["faults"][-8:]
    assert sorted(last)[4] < activation_pages // 10
    assert sum(last) < sum(default["faults"][-8:]) // 4
