"""The safe private attributes kept under the Retain Safe Private option.

Private elements are removed by the Basic Profile: nobody but the vendor knows what they hold.
The option keeps those known to be safe (numbers describing the acquisition, never text about a
person) and useful to AI products: mostly the diffusion and acquisition parameters that
scanners put in private tags. Each entry is (Private Creator, group, element within the block);
the list follows the examples of PS3.15 Table E.3.10-1 and vendors' conformance statements.
"""

from __future__ import annotations

#: (private creator, group, low byte of the element) of attributes safe to keep.
SAFE_PRIVATE_ATTRIBUTES: frozenset[tuple[str, int, int]] = frozenset(
    {
        # Siemens MR: b-value, diffusion directionality, gradient direction, slice timing
        ("SIEMENS MR HEADER", 0x0019, 0x0C),
        ("SIEMENS MR HEADER", 0x0019, 0x0D),
        ("SIEMENS MR HEADER", 0x0019, 0x0E),
        ("SIEMENS MR HEADER", 0x0019, 0x27),
        ("SIEMENS MR HEADER", 0x0019, 0x29),
        ("SIEMENS MR HEADER", 0x0051, 0x0B),
        # GE: b-value, slice/table position and acquisition parameters
        ("GEMS_ACQU_01", 0x0019, 0x23),
        ("GEMS_ACQU_01", 0x0019, 0x24),
        ("GEMS_ACQU_01", 0x0019, 0x27),
        ("GEMS_ACQU_01", 0x0019, 0x9E),
        ("GEMS_PARM_01", 0x0043, 0x27),
        ("GEMS_PARM_01", 0x0043, 0x39),
        ("GEMS_PARM_01", 0x0043, 0x6F),
        # Philips MR: diffusion b-factor and direction, scale slope / intercept
        ("Philips Imaging DD 001", 0x2001, 0x03),
        ("Philips Imaging DD 001", 0x2001, 0x04),
        ("Philips MR Imaging DD 001", 0x2005, 0x0E),
        ("Philips MR Imaging DD 001", 0x2005, 0x0D),
        ("Philips MR Imaging DD 001", 0x2005, 0xB0),
        ("Philips MR Imaging DD 001", 0x2005, 0xB1),
        ("Philips MR Imaging DD 001", 0x2005, 0xB2),
        # Toshiba / Canon CT: orientation of the head-first/feet-first scan
        ("TOSHIBA_MEC_CT3", 0x7005, 0x0B),
    }
)
