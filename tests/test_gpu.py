"""GPU support, tested without a GPU: device selection and refusals, nvidia-smi parsing (with a
stand-in nvidia-smi), the speed worker's repeats and device-memory sampling (with a stand-in llama.cpp),
report format, calibration cost, the CUDA build arguments and the set-up / GPU-check scripts' flags.
The tests that need a real GPU skip, saying so, when nvidia-smi lists none."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf_tiny import coefficients_for, write_tiny_gguf

from pear_edge.runtime import device as dev
from pear_edge.cli import main
from pear_edge.base.errors import PearError
from pear_edge.eval import speed, speed_worker
from pear_edge.eval.lab import bench_speed
from pear_edge.eval.speed import Pair, SpeedReport, measure_once, speed_markdown, write_speed_report

ROOT = Path(__file__).resolve().parent.parent
GPU_VISIBLE = bool(dev.visible_gpus())
NO_GPU_HERE = "a GPU is visible here: --device cuda is valid, so there is nothing to refuse"
NEEDS_GPU = "no NVIDIA GPU (nvidia-smi lists none): the CUDA code path is not exercised on this machine"
TORCH_CUDA = torch.cuda.is_available()
H100 = "0, NVIDIA H100 80GB HBM3, 550.54.15, 9.0, 81559\n"


def fake_nvidia_smi(tmp_path: Path, gpus: str = H100, used: list[int] = (1000,)) -> Path:
    """An executable `nvidia-smi` answering --query-gpu=... with `gpus`, and memory.used from a list
    (one value per call, the last repeated), so a test can make memory grow between samples."""
    (tmp_path / "gpus.csv").write_text(gpus)
    (tmp_path / "used.txt").write_text("\n".join(map(str, used)) + "\n")
    script = tmp_path / "nvidia-smi"
    script.write_text(f"""#!{sys.executable}
import sys
from pathlib import Path
here = Path({str(tmp_path)!r})
if any("memory.used" in a for a in sys.argv):
    values = (here / "used.txt").read_text().split()
    print(values[0])
    (here / "used.txt").write_text("\\n".join(values[1:] or values) + "\\n")
elif any(a.startswith("--query-gpu=compute_cap") for a in sys.argv):
    print("\\n".join(line.split(",")[3].strip() for line in (here / "gpus.csv").read_text().splitlines()))
else:
    sys.stdout.write((here / "gpus.csv").read_text())
""")
    script.chmod(0o755)
    return script


@pytest.fixture
def with_gpu(tmp_path, monkeypatch):
    """A stand-in nvidia-smi listing one H100."""
    monkeypatch.setattr(dev, "NVIDIA_SMI", str(fake_nvidia_smi(tmp_path)))


@pytest.fixture
def without_gpu(monkeypatch, tmp_path):
    monkeypatch.setattr(dev, "NVIDIA_SMI", str(tmp_path / "no-nvidia-smi"))


# --------------------------------------------------------------------------- pear_edge.runtime.device

def test_parse_gpus_reads_nvidia_smi_rows():
    gpus = dev.parse_gpus(H100 + "1, NVIDIA A10, 535.1, 8.6, [N/A]\nNo devices were found\n")
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[0].describe() == "GPU 0: NVIDIA H100 80GB HBM3 (compute 9.0, driver 550.54.15, 81559 MiB)"
    assert gpus[1].memory_mib is None and "MiB" not in gpus[1].describe()


def test_without_nvidia_smi_there_is_no_gpu_and_cuda_is_refused(without_gpu):
    assert dev.visible_gpus() == []
    assert dev.cuda_requested("auto") is False and dev.cuda_requested("cpu") is False
    with pytest.raises(PearError, match=r"^--device cuda: no NVIDIA GPU is visible .*use --device cpu$"):
        dev.cuda_requested("cuda")
    with pytest.raises(PearError, match="--device must be one of auto, cpu, cuda"):
        dev.cuda_requested("gpu")


def test_a_listed_gpu_is_used_and_its_memory_sampled(with_gpu, tmp_path):
    assert [g.name for g in dev.visible_gpus()] == ["NVIDIA H100 80GB HBM3"]
    assert dev.cuda_requested("auto") is True and dev.cuda_requested("cuda") is True
    (tmp_path / "used.txt").write_text("1000\n1500\n1400\n2100\n")
    memory = dev.PeakDeviceMemory("0")
    for _ in range(3):
        memory.sample()
    assert (memory.start, memory.peak, memory.added_mib) == (1000, 2100, 1100)


def test_gpu_index_follows_cuda_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert dev.gpu_index() == "0"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1234,0")
    assert dev.gpu_index() == "GPU-1234"


@pytest.mark.skipif(TORCH_CUDA, reason="torch can use a GPU here: --device cuda is valid")
def test_torch_device_refuses_cuda_without_a_gpu():
    assert dev.torch_device("auto") == "cpu" and dev.torch_device("cpu") == "cpu"
    assert dev.torch_device("mps") == "mps"  # other devices are left to torch, as before
    with pytest.raises(PearError, match=r"^--device cuda:1: torch .* use --device cpu$"):
        dev.torch_device("cuda:1")


def test_environment_names_machine_gpus_and_runtimes(with_gpu):
    env = dev.environment()
    assert env["gpus"][0]["compute_cap"] == "9.0" and env["runtimes"]["torch"] == torch.__version__
    assert "cores" in env["machine"]


# --------------------------------------------------------------------------- calibration cost

def test_run_cost_adds_peak_gpu_memory_on_cuda_only(monkeypatch):
    from pear_edge.runtime.timing import run_cost

    cpu = run_cost(time.perf_counter(), torch.device("cpu"))
    assert "peak_device_mib" not in cpu and cpu["device"] == "cpu"
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: 3 * 1024**3)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda d: 4 * 1024**3)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "NVIDIA H100 80GB HBM3")
    gpu = run_cost(time.perf_counter(), torch.device("cuda"))
    assert (gpu["peak_device_mib"], gpu["peak_device_reserved_mib"]) == (3072.0, 4096.0)
    assert gpu["device"] == "cuda" and gpu["device_name"] == "NVIDIA H100 80GB HBM3"


@pytest.mark.skipif(not TORCH_CUDA, reason="torch sees no CUDA GPU here")
def test_run_cost_measures_real_peak_gpu_memory():
    from pear_edge.runtime.timing import run_cost

    block = torch.empty(64 * 1024**2, dtype=torch.uint8, device="cuda")  # 64 MiB
    cost = run_cost(time.perf_counter(), block.device)
    assert cost["peak_device_mib"] >= 64 and cost["peak_device_reserved_mib"] >= cost["peak_device_mib"]


def test_bench_calibrate_table_shows_gpu_memory():
    from pear_edge.eval.lab.bench_calibrate import markdown

    row = {"label": "cuda", "flags": "--device cuda", "steps": 40, "batch": 8, "wall_seconds": 50.0,
           "peak_rss_gib": 2.5, "held_out": {"metric": "loss", "before": 0.5, "after": 0.3},
           "machine": "X, 16 cores", "torch_threads": 16, "device": "cuda:0", "device_name": "NVIDIA H100",
           "peak_device_gib": 1.25}
    text = markdown([row, {**row, "label": "cpu", "device": "cpu", "device_name": None, "peak_device_gib": None}])
    assert text.startswith("Calibration cost on X, 16 cores, NVIDIA H100 (16 torch threads)")
    assert "| cuda | `--device cuda` | cuda:0 | 1 | float32 | 40 x 8 | 50 (1.00) | - | 2.50 (1.00) | 1.25 |" in text
    assert "| cpu | `--device cuda` | cpu | 1 | float32 | 40 x 8 | 50 (1.00) | - | 2.50 (1.00) | - |" in text
    phases = {"load": 2.0, "proxy": 3.0, "detect": None, "train": 40.0}  # a recipe without detection: "-"
    assert "| 50 (1.00) | 2 / 3 / - / 40 | 2.50 (1.00) |" in markdown([{**row, "phases": phases}])


@pytest.mark.skipif(TORCH_CUDA, reason=NO_GPU_HERE)
def test_calibrate_device_cuda_is_refused_before_loading(tmp_path, capsys):
    model = tmp_path / "hf"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')  # loading it would fail: never reached
    rc = main(["calibrate", "--model", str(model), "--device", "cuda", "-o", str(tmp_path / "c.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("pear-edge: error: --device cuda: torch ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


# --------------------------------------------------------------------------- speed: device and report

@pytest.fixture
def tiny_pair(tmp_path):
    base = write_tiny_gguf(tmp_path / "base.gguf", T.Q8_0)
    coeffs = tmp_path / "c.json"
    coefficients_for(base, [(0, 1, 0.5)]).save(coeffs)
    pear = tmp_path / "pear.gguf"
    from pear_edge.converters.gguf_patch import patch_gguf
    from pear_edge.edits.coefficients import Coefficients

    patch_gguf(base, Coefficients.load(coeffs), pear, progress=False)
    return base, pear, coeffs


@pytest.mark.skipif(GPU_VISIBLE, reason=NO_GPU_HERE)
def test_eval_speed_device_cuda_is_refused_with_one_line(tiny_pair, tmp_path, capsys):
    base, pear, _ = tiny_pair
    out = tmp_path / "speed"
    rc = main(["eval", "speed", "--device", "cuda", "--base", str(base), "--pear", str(pear), "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["pear-edge: error: --device cuda: no NVIDIA GPU is visible (nvidia-smi lists none); "
                               "use --device cpu"]
    assert not out.exists()


@pytest.mark.skipif(GPU_VISIBLE, reason=NO_GPU_HERE)
def test_bench_speed_device_cuda_is_refused_before_any_work(tiny_pair, tmp_path, capsys):
    base, _, coeffs = tiny_pair
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = bench_speed.main(["--device", "cuda", "--base", str(base), "--coefficients", str(coeffs),
                           "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("pear-edge: error: --device cuda: no NVIDIA GPU")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_resolve_device_probes_every_backend(with_gpu, monkeypatch, capsys):
    problems = {"llamacpp": "llama-cpp-python here is a CPU build", "onnx": None}
    monkeypatch.setattr(speed, "cuda_problem", problems.get)
    assert speed.resolve_device("cpu", ["llamacpp"]) == "cpu"
    assert speed.resolve_device("cuda", ["onnx", "onnx"]) == "cuda"
    with pytest.raises(PearError, match=r"^--device cuda: llama-cpp-python here is a CPU build; use --device cpu$"):
        speed.resolve_device("cuda", ["onnx", "llamacpp"])
    assert speed.resolve_device("auto", ["llamacpp"]) == "cpu"
    assert capsys.readouterr().err.startswith("pear-edge: note: a GPU is visible, but llama-cpp-python")


@pytest.mark.parametrize("kind", ["llamacpp", "onnx", "torch"])
def test_probe_says_why_a_backend_cannot_use_cuda(kind):
    problem = speed.cuda_problem(kind)  # in a child process, as the parent of the measurements asks
    if problem is None:
        pytest.skip(f"{kind} can use the GPU here")
    assert {"llamacpp": "CPU build", "onnx": "no CUDAExecutionProvider", "torch": "torch"}[kind] in problem


def _report(device: str) -> SpeedReport:
    gpu = dev.parse_gpus(H100)[0]
    settings = {"rounds": 2, "prompt_tokens": 1024, "gen_tokens": 128, "threads": None, "device": device,
                "repeats": 5, "environment": {"machine": "X, 16 cores", "gpus": [asdict(gpu)],
                                              "runtimes": {"llama-cpp-python": "0.3.36", "cuda-toolkit": "13.0.3"}}}
    sample = {"prefill_tps": 1000.0, "decode_tps": 400.0, "peak_rss_mib": 900.0, "peak_device_mib": 600.0}
    report = SpeedReport(settings, [Pair("llamacpp:Q4_K_M", "llamacpp", "b.gguf", "p.gguf")])
    report.samples = {"llamacpp:Q4_K_M": {"base": [sample, sample],
                                          "pear": [{**sample, "decode_tps": 404.0}, {**sample, "decode_tps": 396.0}]}}
    return report


def test_gpu_report_carries_device_and_peak_device_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(speed, "model_bytes", lambda p: 100)
    monkeypatch.setattr(speed, "tensor_bytes", lambda p: 90)
    report = _report("cuda")
    assert report.metrics[-1] == "peak_device_mib"
    summ = report.summary("llamacpp:Q4_K_M")
    assert summ["peak_device_mib"]["ratio_median"] == 1.0 and summ["decode_tps"]["ratio_median"] == pytest.approx(1.0)
    text = speed_markdown(report)
    assert text.startswith("2 interleaved rounds on the GPU (GPU 0: NVIDIA H100 80GB HBM3 (compute 9.0, driver "
                           "550.54.15, 81559 MiB)), prompt 1024 tokens, 128 decoded tokens (median of 5 timed "
                           "passes per run)")
    assert "Runtimes: llama-cpp-python 0.3.36, cuda-toolkit 13.0.3." in text
    assert "| llamacpp:Q4_K_M | peak_device_mib | 600.0 | 600.0 | 1.000 | [1.000, 1.000] |" in text
    written = write_speed_report(report, tmp_path / "s")
    doc = json.loads(written[0].read_text())
    assert doc["settings"]["device"] == "cuda" and doc["settings"]["environment"]["gpus"][0]["name"].endswith("HBM3")
    assert "peak_device_mib" in doc["summary"]["llamacpp:Q4_K_M"]
    cpu = _report("cpu")
    assert "peak_device_mib" not in cpu.metrics and "on the CPU (X, 16 cores)" in speed_markdown(cpu)


def test_measure_pairs_refuses_an_unresolved_device():
    with pytest.raises(PearError, match="resolve --device"):
        speed.measure_pairs([], device="auto")


# --------------------------------------------------------------------------- speed worker, stand-in llama.cpp

class StandInLlama:
    """What the worker uses of llama_cpp.Llama; records the offload setting it was opened with."""

    opened: dict = {}

    def __init__(self, path, n_ctx, n_threads, n_gpu_layers):
        StandInLlama.opened = {"path": path, "n_ctx": n_ctx, "n_gpu_layers": n_gpu_layers}
        self.n_tokens, self.scores = 0, np.zeros((n_ctx, 8), dtype=np.float32)

    def tokenize(self, data: bytes, add_bos: bool, special: bool) -> list[int]:
        return [b % 8 for b in data[:50]]

    def eval(self, ids):
        time.sleep(0.0005 * len(ids))
        self.n_tokens += len(ids)

    def reset(self):
        self.n_tokens = 0


def test_worker_repeats_passes_offloads_and_samples_device_memory(tmp_path, monkeypatch, capsys):
    import pear_edge.runtime.llamacpp

    monkeypatch.setattr(pear_edge.runtime.llamacpp, "open_gguf",
                        lambda path, n_ctx, n_threads, n_gpu_layers: StandInLlama(path, n_ctx, n_threads, n_gpu_layers))
    monkeypatch.setattr(dev, "NVIDIA_SMI", str(fake_nvidia_smi(tmp_path, used=[500, 900, 1700, 1600, 1650])))
    spec = {"kind": "llamacpp", "path": "m.gguf", "prompt_tokens": 40, "gen_tokens": 3, "threads": 1,
            "device": "cuda", "repeats": 3}
    assert speed_worker.main([json.dumps(spec)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert StandInLlama.opened == {"path": "m.gguf", "n_ctx": 51, "n_gpu_layers": -1}
    assert result["peak_device_mib"] == 1200  # 1700 - 500: after warm-up and each of the 3 passes
    assert result["prefill_tps"] > 0 and result["decode_tps"] > 0
    calls = []
    cpu = speed_worker.measure_llamacpp({**spec, "device": "cpu", "repeats": 2}, lambda: calls.append(1))
    assert StandInLlama.opened["n_gpu_layers"] == 0 and len(calls) == 3 and "peak_device_mib" not in cpu


@pytest.fixture(scope="module")
def gpu_llamacpp():
    if not GPU_VISIBLE:
        pytest.skip(NEEDS_GPU)
    problem = speed.cuda_problem("llamacpp")
    if problem:
        pytest.skip(problem)


@pytest.mark.slow
def test_speed_worker_on_the_gpu_reports_device_memory(gpu_llamacpp):
    from pear_edge.runtime.models import default_gguf_path

    result = measure_once("llamacpp", str(default_gguf_path()), 64, 8, None, device="cuda", repeats=2)
    assert result["prefill_tps"] > 0 and result["decode_tps"] > 0 and result["peak_device_mib"] > 50


@pytest.mark.skipif(not TORCH_CUDA, reason="torch sees no CUDA GPU here")
def test_stopwatch_ticks_after_the_cuda_step_finished():
    from pear_edge.runtime.timing import Stopwatch

    watch = Stopwatch()
    scores = torch.zeros(1, 8, device="cuda")
    assert watch.logits_processor()(torch.zeros(1, 2, dtype=torch.long, device="cuda"), scores) is scores
    assert len(watch.ticks) == 1


# --------------------------------------------------------------------------- bench_speed formats

def test_bench_formats_and_the_as_is_pair(tiny_pair, tmp_path):
    assert bench_speed.parse_formats("gguf, Q4_K_M,q4_k_m,onnx-int8,torch") == ["gguf", "q4_k_m", "onnx-int8", "torch"]
    assert [bench_speed.format_kind(f) for f in ("gguf", "q8_0", "onnx-int4", "torch")] == \
        ["llamacpp", "llamacpp", "onnx", "torch"]
    with pytest.raises(PearError, match="unknown format q9"):
        bench_speed.parse_formats("gguf,q9")
    base, _, coeffs = tiny_pair
    work = tmp_path / "work"
    work.mkdir()
    [pair] = bench_speed.prepare_pairs(["gguf"], base, None, coeffs, work, progress=False)
    assert (pair.label, pair.kind, pair.base) == ("llamacpp:base", "llamacpp", str(base))
    assert Path(pair.pear).parent == work and speed.tensor_bytes(pair.pear) == speed.tensor_bytes(base)


def test_save_model_folder_writes_base_and_folded(tmp_path):
    from tiny import tiny_model

    from pear_edge.edits.coefficients import Coefficients, HeadCoefficient
    from pear_edge.edits.fold import COEFFICIENTS_FILENAME, fold_model, save_model_folder

    class Tokenizer:
        def save_pretrained(self, folder):
            (Path(folder) / "tokenizer.json").write_text("{}")

    loaded = tiny_model("llama")
    loaded.tokenizer = Tokenizer()
    base = save_model_folder(loaded, None, tmp_path / "base")
    coeffs = Coefficients(loaded.fingerprint(), [HeadCoefficient(0, 1, 0.5)])
    fold_model(loaded, coeffs)
    pear = save_model_folder(loaded, coeffs, tmp_path / "pear")
    for folder in (base, pear):
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert (pear / COEFFICIENTS_FILENAME).is_file() and not (base / COEFFICIENTS_FILENAME).exists()


# --------------------------------------------------------------------------- build arguments and scripts

def _cmake_module():
    spec = importlib.util.spec_from_file_location("llama_cmake_args", ROOT / "scripts" / "llama_cmake_args.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cmake_args_for_cuda_build_for_one_architecture(tmp_path, monkeypatch):
    m = _cmake_module()
    cpu = m.cmake_args({"avx2", "fma", "amx_tile"})
    assert cpu == "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON"  # unchanged CPU set-up, never AMX
    assert m.cmake_args({"avx2", "fma"}, "90") == (cpu + " -DGGML_CUDA=ON -DGGML_CUDA_FA=OFF -DGGML_CUDA_NCCL=OFF "
                                                   "-DCMAKE_CUDA_ARCHITECTURES=90")
    assert m.cmake_args(set(), "90", no_vmm=True).endswith("-DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_NO_VMM=ON")
    assert m.cuda_architectures("9.0\n9.0\n") == "90" and m.cuda_architectures("9.0;8.6") == "86;90"
    assert m.cuda_architectures("12.0") == "120" and m.cuda_architectures("86, 90") == "86;90"
    for bad in ("9.x", "", "sm_90"):
        with pytest.raises(ValueError):
            m.cuda_architectures(bad)
    monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path).parent}{os.pathsep}{os.environ['PATH']}")
    assert m.detected_architectures() == "90"


@pytest.mark.skipif(GPU_VISIBLE, reason=NO_GPU_HERE)
def test_cmake_args_cuda_without_a_gpu_needs_an_architecture(capsys):
    m = _cmake_module()
    assert m.main(["--cuda"]) == 2
    assert capsys.readouterr().err.startswith("pear-edge: error: --cuda: nvidia-smi lists no GPU here; give --cuda-arch")
    assert m.main(["--cuda-arch", "9.0"]) == 0 and "-DCMAKE_CUDA_ARCHITECTURES=90" in capsys.readouterr().out


def _script(name: str, *args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / name), *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_setup_dry_run_prints_the_plan_and_changes_nothing(tmp_path):
    env = {"VENV": str(tmp_path / "venv"), "PEAR_EDGE_CACHE": str(tmp_path / "cache")}
    cpu = _script("setup.sh", "--dry-run", env=env)
    expected_args = subprocess.run([sys.executable, str(ROOT / "scripts" / "llama_cmake_args.py")],
                                   capture_output=True, text=True).stdout.strip()
    assert cpu.returncode == 0 and "mode: cpu\n" in cpu.stdout
    assert f"cmake args: {expected_args}\n" in cpu.stdout and "pip: torch==2.13.0\n" in cpu.stdout
    gpu = _script("setup.sh", "--cuda-arch", "9.0", "--dry-run", env=env)
    assert gpu.returncode == 0 and "mode: cuda\n" in gpu.stdout
    args = next(line for line in gpu.stdout.splitlines() if line.startswith("cmake args: "))
    assert args.startswith(f"cmake args: {expected_args} -DGGML_CUDA=ON ") and "-DCMAKE_CUDA_ARCHITECTURES=90" in args
    assert "pip: torch===2.13.0 " in gpu.stdout and "pip: cuda-toolkit[nvcc,cudart,cublas,cccl,crt]==13.0.3 " in gpu.stdout
    assert "pip: onnxruntime-gpu[cuda,cudnn]" in gpu.stdout
    wheels = {line.split(": ", 1)[1] for out in (cpu, gpu) for line in out.stdout.splitlines() if "wheel cache" in line}
    assert len(wheels) == 2 and all(w.startswith(str(tmp_path / "cache" / "llama-wheels")) for w in wheels)
    assert list(tmp_path.iterdir()) == []  # no venv, no cache
    bad = _script("setup.sh", "--gpu", env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("pear-edge: error: unknown option --gpu")


def test_gpu_check_dry_run_lists_every_stage_within_the_budget(tmp_path):
    done = _script("gpu_check.sh", str(tmp_path / "out"), "--dry-run", env={"GPU_CHECK_BUDGET_S": "200"})
    stages = [line.split(" (")[0] for line in done.stdout.splitlines()]
    assert done.returncode == 0 and stages == ["env", "setup", "environment", "speed-gguf", "calibrate",
                                               "speed-torch", "speed-onnx"]
    assert "(<= 200 s): bash scripts/setup.sh --cuda" in done.stdout
    assert "--device cuda --rounds 6 --formats gguf,Q4_K_M,Q8_0 -o " in done.stdout
    assert not (tmp_path / "out").exists()
    assert _script("gpu_check.sh").returncode == 2


@pytest.mark.skipif(GPU_VISIBLE, reason="a GPU is visible: this would run the real GPU check")
def test_gpu_check_without_a_gpu_records_each_stage_on_its_own(tmp_path):
    out = tmp_path / "out"
    done = _script("gpu_check.sh", str(out), env={"OMP_NUM_THREADS": "1", "VENV": str(Path(sys.executable).parents[1]),
                                                  "PEAR_EDGE_CACHE": str(tmp_path / "cache")})
    rows = [line.split("\t") for line in (out / "summary.tsv").read_text().splitlines()[1:]]
    assert done.returncode == 1 and [r[0] for r in rows] == ["env", "setup", "environment", "speed-gguf", "calibrate",
                                                              "speed-torch", "speed-onnx"]
    codes = {r[0]: r[1] for r in rows}
    assert codes["environment"] == "0" and json.loads((out / "environment.json").read_text())["gpus"] == []
    assert all(codes[s] != "0" for s in ("env", "setup", "speed-gguf", "calibrate", "speed-torch", "speed-onnx"))
    assert "pear-edge: error: --device cuda:" in (out / "speed-gguf.log").read_text()
    assert not (tmp_path / "cache").exists()  # the set-up stopped before installing or building anything
