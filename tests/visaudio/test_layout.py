"""Generation and evaluation stand on their own: loading a checkpoint and sampling import no
training code (the trainer pulls in the optimiser, DDP and data-loading machinery, and a change
there must not be able to break `visaudio generate`)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generate_and_eval_do_not_import_the_trainer():
    code = ("import sys\n"
            "import visaudio.generate, visaudio.checkpoint, visaudio.model.flow_matching, visaudio.eval.runner\n"
            "from visaudio.generate import Synthesizer\n"
            "print(sorted(m for m in sys.modules if m == 'visaudio.train' or m.startswith('visaudio.train.')))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]", r.stdout
