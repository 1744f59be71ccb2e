"""Repacked weight buffers: off on AMX CPUs (llama.cpp #20824), on elsewhere, the settings winning."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import running_server
from interference.engine._llama import model_params
from interference.engine.cpu import CpuInfo, choose_repack, parse_cpu_flags, read_cpu_info
from interference.providers.managed import load_engine
from interference.settings import EngineOptions, load_settings

SAPPHIRE_RAPIDS = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep avx2 avx512f avx512bw avx512_vnni \
amx_bf16 avx512_fp16 amx_tile amx_int8 arch_capabilities
bugs\t\t: spectre_v1 spectre_v2

processor\t: 1
vendor_id\t: GenuineIntel
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep avx2 avx512f amx_tile amx_int8
"""

EPYC = """\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep avx avx2 fma bmi2 sha_ni
"""

GRAVITON = """\
processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm
CPU implementer\t: 0x41
"""

SKYLAKE_AVX512 = """\
model name\t: Intel(R) Xeon(R) CPU @ 2.00GHz
flags\t\t: fpu sse2 avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl
"""


@pytest.mark.parametrize(
    ("text", "amx", "enabled"),
    [
        (SAPPHIRE_RAPIDS, True, False),
        (EPYC, False, True),
        (GRAVITON, False, True),
        (SKYLAKE_AVX512, False, True),
    ],
    ids=["sapphire-rapids", "epyc", "graviton", "skylake"],
)
def test_repacking_is_off_exactly_on_amx_cpus(text: str, amx: bool, enabled: bool) -> None:
    cpu = parse_cpu_flags(text)
    assert cpu.has_amx is amx
    choice = choose_repack(None, cpu)
    assert choice.enabled is enabled
    assert ("#20824" in choice.reason) is amx


def test_cpuinfo_parsing() -> None:
    cpu = parse_cpu_flags(SAPPHIRE_RAPIDS)
    assert cpu.model == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert {"amx_int8", "amx_tile", "avx512f"} <= cpu.flags
    assert "bugs" not in cpu.flags and "spectre_v1" not in cpu.flags
    assert "asimd" in parse_cpu_flags(GRAVITON).flags
    assert parse_cpu_flags("") == CpuInfo(model="", flags=frozenset())


def test_an_unreadable_cpuinfo_means_no_flags(tmp_path: Path) -> None:
    assert read_cpu_info(tmp_path / "missing").flags == frozenset()
    (tmp_path / "cpuinfo").write_text(SAPPHIRE_RAPIDS)
    assert read_cpu_info(tmp_path / "cpuinfo").has_amx


@pytest.mark.parametrize("text", [SAPPHIRE_RAPIDS, EPYC], ids=["amx", "no-amx"])
@pytest.mark.parametrize("setting", [True, False])
def test_the_setting_overrides_the_cpu(text: str, setting: bool) -> None:
    choice = choose_repack(setting, parse_cpu_flags(text))
    assert choice.enabled is setting
    assert choice.reason == ("--repack" if setting else "--no-repack")


def test_repack_setting_sources(tmp_path: Path) -> None:
    assert load_settings(env={}).repack is None
    assert load_settings(env={"INTERFERENCE_REPACK": "false"}).repack is False
    config = tmp_path / "c.toml"
    config.write_text("repack = true\n")
    assert load_settings(env={}, config_file=config).repack is True
    assert load_settings({"repack": False}, env={"INTERFERENCE_REPACK": "true"}).repack is False


def test_model_params_carry_the_choice() -> None:
    assert model_params(repack=False).use_extra_bufts is False
    assert model_params(repack=True).use_extra_bufts is True


@pytest.mark.parametrize(("text", "enabled"), [(SAPPHIRE_RAPIDS, False), (EPYC, True)], ids=["amx", "no-amx"])
def test_an_engine_loaded_for_a_cpu_uses_its_choice(text: str, enabled: bool) -> None:
    engine = load_engine(None, EngineOptions(parallel=1), cpu=parse_cpu_flags(text))
    try:
        assert engine.config.repack is enabled
    finally:
        engine.close()


@pytest.mark.parametrize("flag", ["--no-repack", "--repack"])
def test_serve_reports_the_choice_and_answers(flag: str, tmp_path: Path) -> None:
    with running_server(flag, "--parallel", "1", "--no-embeddings", tmp=tmp_path) as server:
        assert f"weight repacking {flag}" in server.log
        if flag == "--repack" and read_cpu_info().has_amx:
            return  # forced on where it crashes: only the choice itself is checked here
        reply = server.client().chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
        )
        assert reply.choices[0].finish_reason in ("stop", "length")


def test_serve_decides_from_this_cpu_by_default(tmp_path: Path) -> None:
    expected = choose_repack(None, read_cpu_info()).reason
    with running_server("--parallel", "1", "--no-embeddings", tmp=tmp_path) as server:
        assert f"weight repacking {expected}" in server.log
