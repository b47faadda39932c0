//! One adapter-tuning training step (frozen ViT + seq_adapter + head, CE, backward, SGD),
//! composed vs fused ops, for the three small shapes of docs/performance-notes.md.
//!
//! Run: `RAYON_NUM_THREADS=2 cargo bench --bench train_step [-- STEPS]`

use idat_pipe::nn::bench::bench_step;
use idat_pipe::nn::ops::OpsImpl;
use idat_pipe::nn::vit::VitConfig;

fn main() -> anyhow::Result<()> {
    let steps: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(15);
    let shapes = [(192, 224, 16, 8), (64, 32, 4, 64), (64, 32, 8, 64)];
    println!("threads: {}", candle_core::utils::get_num_threads());
    println!("| model (depth 4, heads 4) | image / patch / tokens | batch | composed | fused ops, composed linear | fused | speed-up |");
    println!("|---|---|---|---|---|---|---|");
    for (dim, img, patch, batch) in shapes {
        let cfg = VitConfig {
            img_size: img,
            patch_size: patch,
            in_chans: 3,
            num_classes: 10,
            embed_dim: dim,
            depth: 4,
            num_heads: 4,
            mlp_ratio: 4.0,
            qkv_bias: true,
            drop_rate: 0.0,
            attn_drop_rate: 0.0,
            drop_path_rate: 0.0,
        };
        let c = bench_step(&cfg, batch, OpsImpl::Composed, 2, steps)?;
        let h = bench_step(&cfg, batch, OpsImpl::FusedComposedLinear, 2, steps)?;
        let f = bench_step(&cfg, batch, OpsImpl::Fused, 2, steps)?;
        println!(
            "| dim {dim} | {img} / {patch} / {} | {batch} | {:.1} ms (fwd {:.1}) | {:.1} ms (fwd {:.1}) | {:.1} ms (fwd {:.1}) | {:.2}x |",
            cfg.num_tokens(),
            c.median_ms,
            c.forward_median_ms,
            h.median_ms,
            h.forward_median_ms,
            f.median_ms,
            f.forward_median_ms,
            c.median_ms / f.median_ms
        );
    }
    Ok(())
}
