"""The sketch built for the real board: Debian's gcc-avr, avr-libc and arduino-core-avr compile it with the Arduino
core for the ATmega328P (Uno), as the Arduino IDE would (its platform.txt flags: -Os, LTO, section GC), and the
result must fit. RAM (.data + .bss + .noinit) at most 75 % of the 2048 bytes: the stack needs the rest, and
nothing reports a stack that runs into the data. Flash (.text + .data) at most 32256 bytes: 32 KiB less Optiboot.

Skipped, saying why, where the toolchain is absent; ``.ci/run`` installs it and sets BCI_RIG_REQUIRE_AVR=1, which
turns the skip into a failure (so CI cannot pass without building the firmware).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

SKETCH = Path(__file__).resolve().parents[1] / "reward" / "firmware" / "bci_reward" / "bci_reward.ino"
AVR_PLATFORM = Path("/usr/share/arduino/hardware/arduino/avr")  # Debian's arduino-core-avr
CORE = AVR_PLATFORM / "cores" / "arduino"
VARIANT = AVR_PLATFORM / "variants" / "standard"  # the Uno's pins

RAM_BYTES = 2048
RAM_LIMIT = RAM_BYTES * 3 // 4
FLASH_LIMIT = 32256
TOOLS = ("avr-gcc", "avr-g++", "avr-size")
PACKAGES = "gcc-avr avr-libc arduino-core-avr"

DEFINES = ["-mmcu=atmega328p", "-DF_CPU=16000000L", "-DARDUINO=10819", "-DARDUINO_AVR_UNO", "-DARDUINO_ARCH_AVR",
           f"-I{CORE}", f"-I{VARIANT}"]
C_FLAGS = ["-c", "-Os", "-std=gnu11", "-ffunction-sections", "-fdata-sections", "-flto", "-fno-fat-lto-objects"]
# DECIMAL_DIG: Debian's avr-gcc 5.4 defines it in <float.h> for C99 only, and the core's WString.cpp (which the
# sketch does not use) needs it in C++; newer compilers define it for C++11 themselves.
CPP_FLAGS = ["-c", "-Os", "-std=gnu++11", "-fpermissive", "-fno-exceptions", "-ffunction-sections", "-fdata-sections",
             "-fno-threadsafe-statics", "-Wno-error=narrowing", "-flto", "-DDECIMAL_DIG=__DECIMAL_DIG__"]
ASM_FLAGS = ["-c", "-x", "assembler-with-cpp", "-flto"]
LINK_FLAGS = ["-Os", "-flto", "-fuse-linker-plugin", "-Wl,--gc-sections", "-mmcu=atmega328p"]


def missing_toolchain() -> str:
    """Why the firmware cannot be built here, or ""."""
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    if absent:
        return f"{', '.join(absent)} not installed"
    if not (CORE / "Arduino.h").is_file() or not (VARIANT / "pins_arduino.h").is_file():
        return f"the Arduino AVR core is not at {AVR_PLATFORM}"
    return ""


def compile_one(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")


def section_sizes(elf: Path) -> dict[str, int]:
    """Bytes per section, from ``avr-size -A`` (System V format: name, size, address)."""
    text = subprocess.run(["avr-size", "-A", str(elf)], capture_output=True, text=True, check=True).stdout
    sizes: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes


@pytest.fixture(scope="module")
def firmware_elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    problem = missing_toolchain()
    if problem:
        if os.environ.get("BCI_RIG_REQUIRE_AVR") == "1":
            pytest.fail(f"BCI_RIG_REQUIRE_AVR=1 but {problem} (apt-get install {PACKAGES})")
        pytest.skip(f"{problem}: cannot build the firmware for the ATmega328P (apt-get install {PACKAGES})")
    build = tmp_path_factory.mktemp("avr")
    sketch = build / "bci_reward.cpp"  # what the IDE does with an .ino whose functions are declared before use
    shutil.copyfile(SKETCH, sketch)
    commands: list[list[str]] = []
    for source in sorted(CORE.iterdir()):
        flags = {".c": ["avr-gcc", *C_FLAGS], ".cpp": ["avr-g++", *CPP_FLAGS], ".S": ["avr-gcc", *ASM_FLAGS]}
        if source.suffix in flags:
            commands.append([*flags[source.suffix], *DEFINES, str(source), "-o", str(build / f"core_{source.name}.o")])
    # The sketch itself must be warning-free.
    commands.append(["avr-g++", *CPP_FLAGS, "-Wall", "-Wextra", "-Werror", *DEFINES, str(sketch), "-o",
                     str(build / "sketch.o")])
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(compile_one, commands))
    elf = build / "bci_reward.elf"
    compile_one(["avr-gcc", *LINK_FLAGS, "-o", str(elf), *sorted(str(o) for o in build.glob("*.o")), "-lm"])
    return elf


def test_the_firmware_fits_the_uno_with_room_for_the_stack(firmware_elf: Path, record_property) -> None:  # noqa: ANN001
    sizes = section_sizes(firmware_elf)
    ram = sizes.get(".data", 0) + sizes.get(".bss", 0) + sizes.get(".noinit", 0)
    flash = sizes.get(".text", 0) + sizes.get(".data", 0)
    record_property("ram_bytes", ram)
    record_property("flash_bytes", flash)
    summary = f"RAM {ram} B ({ram / RAM_BYTES:.0%} of {RAM_BYTES}), flash {flash} B (of {FLASH_LIMIT})"
    print(summary)
    assert sizes.get(".text", 0) > 1000, f"no program in the image: {sizes}"
    assert ram <= RAM_LIMIT, f"{summary}: above {RAM_LIMIT} B of RAM, the stack would have under a quarter"
    assert flash <= FLASH_LIMIT, f"{summary}: does not fit beside the bootloader"


def test_what_survives_a_reset_is_in_noinit_ram(firmware_elf: Path) -> None:
    """The pulse log, link id and duty-cycle count must not be zeroed by the C runtime at reset (PROTOCOL.md)."""
    noinit = section_sizes(firmware_elf).get(".noinit", 0)
    # magic, link id, duty carry, log index, 16 entries of (seq, duration, open time, state), check
    assert noinit == 4 + 4 + 4 + 1 + 16 * (4 + 4 + 4 + 1) + 4
