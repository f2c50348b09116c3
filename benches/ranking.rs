//! Offer ranking alone: filter and rank 1k, 10k and 100k offers against a
//! session's requirements. Reports time per offer.

#[path = "common/ranking_input.rs"]
mod ranking_input;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn ranking(c: &mut Criterion) {
    let requirements = ranking_input::requirements();
    let mut group = c.benchmark_group("filter_and_rank");
    for n in [1_000, 10_000, 100_000] {
        let all = ranking_input::offers(n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &all, |b, all| {
            b.iter(|| black_box(ranking_input::filter_and_rank(all, &requirements)))
        });
    }
    group.finish();
}

criterion_group!(benches, ranking);
criterion_main!(benches);
