//! Prints the fused pointwise kernels of a program and their CUDA C, and compiles them with
//! NVRTC when it is available: `cargo run --example kernels -- examples/mlp.ir`.
fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/mlp.ir".into());
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read {path}: {e}");
            std::process::exit(1);
        }
    };
    let g = match tpc::load(&path, &text) {
        Ok(g) => g,
        Err(e) => {
            e.eprint();
            std::process::exit(1);
        }
    };
    let segments = tpc::codegen::fuse::segment(&g);
    let kernels: Vec<tpc::codegen::kir::Kernel> = segments
        .iter()
        .filter_map(|s| match s {
            tpc::codegen::fuse::Segment::Pointwise { kernel, .. } => {
                Some(tpc::codegen::kir::Kernel::Fused(kernel.clone()))
            }
            _ => None,
        })
        .collect();
    for k in &kernels {
        println!("{k}");
    }
    let source = tpc::codegen::cuda::module_source(&kernels);
    println!("{source}");
    for arch in tpc::codegen::nvrtc::ARCHES {
        match tpc::codegen::nvrtc::compile(&source, arch) {
            Ok(ptx) => println!("// {arch}: {} bytes of PTX", ptx.len()),
            Err(e) => println!("// {arch}: {e}"),
        }
    }
}
