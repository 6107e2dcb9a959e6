#!/usr/bin/env bash
# Pretrain one method on Fashion-MNIST from its config, then 20-NN and a cached linear-probe lr sweep of
# its backbone (the BENCHMARKS.md rows beside the default job). Usage: tools/fmnist_method_probe.sh CONFIG ARCH KEY
# [PRETRAIN FLAGS...], e.g. tools/fmnist_method_probe.sh configs/fashion_mnist_sit.yaml sit_pico student
# (flags after KEY go to main_pretrain.py; an --output_dir or --patch_size there replaces the config's)
set -euo pipefail
cd "$(dirname "$0")/.."
cfg=$1; arch=$2; key=$3; shift 3
read -r out patch < <(.venv/bin/python -c "import yaml,sys; c=yaml.safe_load(open(sys.argv[1])); print(c['output_dir'], c.get('patch_size', 4))" "$cfg")
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    [[ ${args[i]} == --output_dir ]] && out=${args[i + 1]}
    [[ ${args[i]} == --patch_size ]] && patch=${args[i + 1]}
done
start=$(date +%s)
.venv/bin/python main_pretrain.py --config "$cfg" "$@"
mid=$(date +%s)
.venv/bin/python eval_knn.py --arch "$arch" --patch_size "$patch" --pretrained_weights "$out/checkpoint.pth" \
    --checkpoint_key "$key" --dataset fashion_mnist --nb_knn 20 --num_workers 0 --batch_size_per_gpu 256 \
    | tee "$out/knn.txt"
.venv/bin/python eval_linear.py --arch "$arch" --patch_size "$patch" --pretrained_weights "$out/checkpoint.pth" \
    --checkpoint_key "$key" --dataset fashion_mnist --num_labels 10 --num_workers 0 --print_freq 0 \
    --batch_size_per_gpu 256 --epochs 20 --cache_features true --lr_sweep true --output_dir "$out/linear_sweep" \
    | grep -E "Top-1|Best:" | tail -2
end=$(date +%s)
echo "pretraining $((mid - start)) s, evaluation $((end - mid)) s"
