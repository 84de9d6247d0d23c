#!/usr/bin/env bash
# Regenerates the model card's pictures with the trainer's own commands, from
# generated faces only (seeds, never dataset images).
# Usage: docs/model-card/make.sh [TRAINER] [MODEL]
set -euo pipefail
cd "$(dirname "$0")/../.."
T=${1:-./target/debug/trainer}
M=${2:-models/celeba32.rgflow}
D=docs/model-card
"$T" sample --model "$M" --out $D/samples.png --count 8 --temperature "0.6;0.7;0.8" --seed 1 --zoom 3 --backend flex
"$T" sample --model "$M" --out $D/samples-per-level.png --count 8 --temperature 0.5,0.6,0.8,0.9 --seed 2 --zoom 3 --backend flex
"$T" mix --model "$M" --a seed:3 --b seed:4 --rows 3 --temperature 0.7 --out $D/mix.png --zoom 3 --backend flex
"$T" receptive --model "$M" --image seed:5 --image-temperature 0.7 --per-level 4 --out $D/receptive.png --zoom 3 --backend flex
"$T" inpaint --model "$M" --image seed:6 --image-temperature 0.7 --mask centre:8 --mask centre:16 --samples 4 --seed 1 --out $D/inpaint.png --zoom 3 --backend flex
