//! Runs the sharding front end (parse, default pipeline, lower one rank) on a generated GPT-2
//! stack many times, for profilers: `cargo run --release --example profile_front -- 96 20`.
fn main() {
    let mut args = std::env::args().skip(1);
    let layers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(96);
    let reps: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let text = tpc::gen::gpt_stack(layers, 16, 768, tpc::gen::Annotate::Megatron);
    let bindings = tpc::parse_bindings("B=2,S=128").expect("bindings");
    let sizes = vec![("tp".to_string(), 8usize)];
    let mut phases = [0f64; 3];
    for _ in 0..reps {
        let t0 = std::time::Instant::now();
        let mut g = tpc::load("gen.ir", &text).expect("valid");
        let t1 = std::time::Instant::now();
        let mut pm =
            tpc::passes::PassManager::parse(tpc::passes::DEFAULT_PIPELINE).expect("pipeline");
        pm.verify_each = false;
        pm.context.symbols = bindings.clone();
        let records = pm.run(&mut g).expect("passes");
        let t2 = std::time::Instant::now();
        tpc::passes::lower_to_local::lower_to_local(&g, &sizes, &bindings, 0).expect("lowers");
        let t3 = std::time::Instant::now();
        phases[0] += (t1 - t0).as_secs_f64();
        phases[1] += (t2 - t1).as_secs_f64();
        phases[2] += (t3 - t2).as_secs_f64();
        if reps == 1 {
            for r in records {
                eprintln!("{:>8.3} ms {}", r.time.as_secs_f64() * 1e3, r.pass);
            }
        }
    }
    let n = reps as f64;
    println!(
        "L={layers}: parse {:.2} ms, passes {:.2} ms, lower {:.2} ms",
        phases[0] / n * 1e3,
        phases[1] / n * 1e3,
        phases[2] / n * 1e3
    );
}
