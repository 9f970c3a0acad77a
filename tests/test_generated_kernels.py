"""The per-instantiation CUDA sources are generated: the committed folder must
be what csrc/cuda/generate_kernels.py writes, and the build's defaults must
select the same head dims and dtypes the generator knows."""
import importlib.util
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "csrc" / "cuda" / "generate_kernels.py"


def _generator():
    spec = importlib.util.spec_from_file_location("generate_kernels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_committed_instantiations_are_up_to_date(capsys):
    assert _generator().main(["--check"]) == 0, capsys.readouterr().err


def test_check_reports_edited_missing_and_extra_files(tmp_path, capsys):
    gen = _generator()
    assert gen.main(["--out", str(tmp_path)]) == 0
    assert gen.main(["--out", str(tmp_path), "--check"]) == 0
    files = sorted(tmp_path.glob("*.cu"))
    files[0].write_text(files[0].read_text() + "// hand edit\n")
    files[1].unlink()
    (tmp_path / "fwd_hdim48_fp16.cu").write_text("// stray\n")
    capsys.readouterr()
    assert gen.main(["--out", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    assert f"{files[0].name}: differs" in err
    assert f"{files[1].name}: missing" in err
    assert "fwd_hdim48_fp16.cu: not written by the generator" in err
    # Writing mends all three.
    assert gen.main(["--out", str(tmp_path)]) == 0
    assert gen.main(["--out", str(tmp_path), "--check"]) == 0
    assert not (tmp_path / "fwd_hdim48_fp16.cu").exists()


def test_every_instantiation_matches_a_launcher_and_the_build_defaults():
    gen = _generator()
    cmake = (ROOT / "CMakeLists.txt").read_text()
    head_dims = re.search(r'set\(SWA_HEAD_DIMS "([0-9;]+)"', cmake).group(1).split(";")
    dtypes = re.search(r'set\(SWA_DTYPES "([a-z0-9;]+)"', cmake).group(1).split(";")
    assert sorted(map(int, head_dims)) == sorted(gen.HEAD_DIMS)
    assert sorted(dtypes) == sorted(gen.DTYPES)
    kernels = ROOT / "csrc" / "cuda" / "kernels"
    for family in gen.FAMILIES:
        header = (kernels / family.header).read_text()
        # The launcher the files instantiate is declared in the header they include.
        assert re.search(rf"\bcudaError_t\s+{family.function}\s*\(", header), family
    names = set(gen.generated_files())
    for name in names:
        assert re.fullmatch(r"[a-z0-9_]+_hdim[0-9]+_(fp16|bf16)\.cu", name), name
    # No instantiation is left behind in the kernels folder.
    assert not [p.name for p in kernels.glob("*.cu") if p.name in names]
