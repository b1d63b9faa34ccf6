#!/usr/bin/env python3
"""Renders a terminal capture (`tmux capture-pane -e -p`) to a PNG.

    ansi2png.py CAPTURE.ansi OUT.png [--cols N --rows N] [--bg dark|light]

Understands the SGR sequences a ratatui program emits: reset, bold, dim,
italic, underline, reverse, the 16 colours, 256 colours and true colour.
Needs Pillow and the DejaVu Sans Mono font (Debian: fonts-dejavu-core).
"""

import argparse
import re
import sys

from PIL import Image, ImageDraw, ImageFont

FONT_DIR = "/usr/share/fonts/truetype/dejavu/"
SIZE = 16

# xterm's default 16 colours.
BASE16 = [
    (0, 0, 0), (205, 0, 0), (0, 205, 0), (205, 205, 0),
    (0, 0, 238), (205, 0, 205), (0, 205, 205), (229, 229, 229),
    (127, 127, 127), (255, 0, 0), (0, 255, 0), (255, 255, 0),
    (92, 92, 255), (255, 0, 255), (0, 255, 255), (255, 255, 255),
]
SCHEMES = {
    "dark": {"fg": (220, 220, 220), "bg": (24, 24, 27)},
    "light": {"fg": (30, 30, 30), "bg": (250, 250, 250)},
}


def color256(n):
    if n < 16:
        return BASE16[n]
    if n < 232:
        n -= 16
        steps = [0, 95, 135, 175, 215, 255]
        return (steps[n // 36], steps[(n // 6) % 6], steps[n % 6])
    level = 8 + (n - 232) * 10
    return (level, level, level)


class Style:
    def __init__(self):
        self.reset()

    def reset(self):
        self.fg = None
        self.bg = None
        self.bold = False
        self.dim = False
        self.italic = False
        self.underline = False
        self.reverse = False

    def copy(self):
        other = Style()
        other.__dict__.update(self.__dict__)
        return other

    def apply(self, params):
        codes = [int(p) if p else 0 for p in params.split(";")] if params else [0]
        i = 0
        while i < len(codes):
            c = codes[i]
            if c == 0:
                self.reset()
            elif c == 1:
                self.bold = True
            elif c == 2:
                self.dim = True
            elif c == 3:
                self.italic = True
            elif c == 4:
                self.underline = True
            elif c == 7:
                self.reverse = True
            elif c == 22:
                self.bold = self.dim = False
            elif c == 23:
                self.italic = False
            elif c == 24:
                self.underline = False
            elif c == 27:
                self.reverse = False
            elif 30 <= c <= 37:
                self.fg = BASE16[c - 30]
            elif 90 <= c <= 97:
                self.fg = BASE16[c - 90 + 8]
            elif 40 <= c <= 47:
                self.bg = BASE16[c - 40]
            elif 100 <= c <= 107:
                self.bg = BASE16[c - 100 + 8]
            elif c == 39:
                self.fg = None
            elif c == 49:
                self.bg = None
            elif c in (38, 48) and i + 1 < len(codes):
                if codes[i + 1] == 5 and i + 2 < len(codes):
                    rgb = color256(codes[i + 2])
                    i += 2
                elif codes[i + 1] == 2 and i + 4 < len(codes):
                    rgb = tuple(codes[i + 2:i + 5])
                    i += 4
                else:
                    rgb = None
                if c == 38:
                    self.fg = rgb
                else:
                    self.bg = rgb
            i += 1


TOKEN = re.compile(r"\x1b\[([0-9;]*)m|\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|([^\x1b])")


def parse(text, cols, rows):
    grid = [[(" ", Style()) for _ in range(cols)] for _ in range(rows)]
    style = Style()
    for row, line in enumerate(text.split("\n")[:rows]):
        col = 0
        for match in TOKEN.finditer(line):
            if match.group(1) is not None:
                style.apply(match.group(1))
            elif match.group(2) is not None and col < cols:
                grid[row][col] = (match.group(2), style.copy())
                col += 1
    return grid


def render(grid, scheme, out):
    regular = ImageFont.truetype(FONT_DIR + "DejaVuSansMono.ttf", SIZE)
    bold = ImageFont.truetype(FONT_DIR + "DejaVuSansMono-Bold.ttf", SIZE)
    left, top, right, bottom = regular.getbbox("M")
    cell_w = round(regular.getlength("M"))
    cell_h = round(SIZE * 1.25)
    pad = 12
    rows, cols = len(grid), len(grid[0])
    image = Image.new("RGB", (cols * cell_w + 2 * pad, rows * cell_h + 2 * pad), scheme["bg"])
    draw = ImageDraw.Draw(image)
    for r, line in enumerate(grid):
        for c, (char, style) in enumerate(line):
            fg = style.fg or scheme["fg"]
            bg = style.bg or scheme["bg"]
            if style.reverse:
                fg, bg = bg, fg
            if style.dim:
                fg = tuple((a + b) // 2 for a, b in zip(fg, bg))
            x, y = pad + c * cell_w, pad + r * cell_h
            if bg != scheme["bg"]:
                draw.rectangle([x, y, x + cell_w - 1, y + cell_h - 1], fill=bg)
            if char != " ":
                draw.text((x, y + 1), char, font=bold if style.bold else regular, fill=fg)
            if style.underline:
                draw.line([x, y + cell_h - 2, x + cell_w - 1, y + cell_h - 2], fill=fg)
    image.save(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("capture")
    parser.add_argument("out")
    parser.add_argument("--cols", type=int, default=120)
    parser.add_argument("--rows", type=int, default=34)
    parser.add_argument("--bg", choices=SCHEMES, default="dark")
    args = parser.parse_args()
    with open(args.capture, encoding="utf-8", errors="replace") as f:
        text = f.read()
    render(parse(text, args.cols, args.rows), SCHEMES[args.bg], args.out)


if __name__ == "__main__":
    sys.exit(main())
