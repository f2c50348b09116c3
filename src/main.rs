//! The `gpu-shopper` binary: the operator and its tools.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use gpu_shopper::config::Config;
use gpu_shopper::controller::{self, Context};
use gpu_shopper::http::{self, Health};
use gpu_shopper::metrics::Metrics;
use gpu_shopper::provider::http::CallPolicy;
use gpu_shopper::{crd, simulator, telemetry};

/// Rents GPUs from cheap marketplaces for a Kubernetes cluster, proves they work, and never leaves one billing.
#[derive(Parser)]
#[command(
    name = "gpu-shopper",
    version,
    propagate_version = true,
    after_help = "Operator commands (run by the chart; `COMMAND --help` for each): controller, gateway, simulate, uninstall-guard, crds, reference.\n\nInstalled as `kubectl-gpu_shopper` on PATH, it is also the kubectl plugin `kubectl gpu-shopper ...`."
)]
struct Cli {
    #[command(flatten)]
    globals: gpu_shopper::cli::GlobalFlags,
    #[command(subcommand)]
    command: Command,
}

/// The name this binary was run as, for help and completions: `kubectl gpu-shopper`
/// when kubectl runs it as its plugin `kubectl-gpu_shopper`.
fn invoked_as() -> String {
    let file = executable_name();
    match file.strip_prefix("kubectl-") {
        Some(plugin) => format!("kubectl {}", plugin.replace('_', "-")),
        None => "gpu-shopper".into(),
    }
}

/// The file name this binary was run as ("gpu-shopper", "kubectl-gpu_shopper").
fn executable_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|a| std::path::Path::new(&a).file_name().map(|f| f.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "gpu-shopper".into())
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator: reconcile GpuSessions and GpuOfferFilters.
    ///
    /// Every setting below is a flag or the environment variable beside it (the
    /// chart sets the variables; keys belong in the environment, where the
    /// process list does not show them). A variable set to nothing counts as
    /// unset. The cluster is found through KUBECONFIG or the in-cluster service
    /// account.
    #[command(hide = true)]
    Controller(Box<gpu_shopper::config::ControllerArgs>),
    /// Serve an Inference session's model in the cluster (run by the operator as a Deployment).
    ///
    /// Holds one SSH login to the session's machine (host key pinned), carries each
    /// request to the model's port on the machine's loopback, and asks for the
    /// session's API key. Outside the cluster, --ssh names a fixed machine.
    #[command(hide = true)]
    Gateway(gpu_shopper::gateway::GatewayArgs),
    /// Serve simulated Vast.ai, TensorDock and RunPod APIs on loopback.
    ///
    /// Prints the environment that points `gpu-shopper controller` at them, then
    /// serves until Ctrl-C. The control endpoint (GET /state, PUT /faults/PROVIDER)
    /// shows instances, costs and calls, and switches faults on.
    ///
    /// Example: gpu-shopper simulate --market my-market.yaml --port 18000
    #[command(hide = true)]
    Simulate {
        /// Market file (YAML or JSON); the built-in market when omitted.
        #[arg(long)]
        market: Option<std::path::PathBuf>,
        /// First of four consecutive loopback ports (0: any free ports).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// The live market, ranked, from the configured marketplaces.
    Offers(gpu_shopper::cli::offers::OffersArgs),
    /// Check every configured marketplace with the real credentials, read-only: run it first after install.
    Doctor(gpu_shopper::cli::doctor::DoctorArgs),
    /// Wait until a session is Ready (or, with --for complete, has finished); exit 1 if it fails.
    Wait(gpu_shopper::cli::wait::WaitArgs),
    /// Exit 1 while any GpuSession exists (the chart's pre-delete hook: uninstall sessions first).
    #[command(hide = true)]
    UninstallGuard(gpu_shopper::cli::guard::GuardArgs),
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell.
    ///
    /// Example: gpu-shopper completion bash > /etc/bash_completion.d/gpu-shopper
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Log in to a session's machine with the key from its Secret (or print the ssh command).
    Ssh(gpu_shopper::cli::ssh::SshArgs),
    /// A session's workload output, over SSH (-f follows it); where the saved log is once the machine is gone.
    Logs(gpu_shopper::cli::logs::LogsArgs),
    /// Copy files or directories to or from a session's machine (SESSION:PATH), over its pinned SSH login.
    Cp(gpu_shopper::cli::cp::CpArgs),
    /// A Host block for ~/.ssh/config with the session's key and pinned host key (for IDEs, scp, rsync).
    SshConfig(gpu_shopper::cli::ssh_config::SshConfigArgs),
    /// Carry a local port to a port on a session's machine over SSH (the model, say).
    PortForward(gpu_shopper::cli::port_forward::PortForwardArgs),
    /// Where in-cluster clients call an Inference session (--env: OPENAI_BASE_URL and OPENAI_API_KEY).
    Endpoint(gpu_shopper::cli::endpoint::EndpointArgs),
    /// Accrued cost per session and consumer: from status, and for deleted sessions from their last Event.
    Cost(gpu_shopper::cli::cost::CostArgs),
    /// A session's phase, conditions and attempts, with what to do next.
    Status(gpu_shopper::cli::status::StatusArgs),
    /// Print the field reference of both resources as Markdown (docs/reference.md).
    #[command(hide = true)]
    Reference,
    /// Print the CustomResourceDefinitions as YAML.
    ///
    /// Example: gpu-shopper crds | kubectl apply -f -
    #[command(hide = true)]
    Crds,
}

/// Under the dhat-heap feature every allocation is recorded for the heap profile.
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// jemalloc returns freed memory to the system where glibc's allocator kept the
/// resident set at 2.5x the heap's peak (docs/performance.md).
#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's own count of what is allocated and what it keeps resident (stats are
/// refreshed by advancing its epoch), for the heap series at /metrics.
#[cfg(not(feature = "dhat-heap"))]
fn jemalloc_figures() -> Option<gpu_shopper::metrics::HeapFigures> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    Some(gpu_shopper::metrics::HeapFigures {
        allocated_bytes: stats::allocated::read().ok()? as u64,
        resident_bytes: stats::resident::read().ok()? as u64,
    })
}

/// The heap profile, written to dhat-heap.json when it is dropped: on SIGUSR1 (the heap
/// as it is then, say with every session running) or when main returns.
#[cfg(feature = "dhat-heap")]
static HEAP_PROFILER: std::sync::Mutex<Option<dhat::Profiler>> = std::sync::Mutex::new(None);

#[cfg(feature = "dhat-heap")]
fn write_heap_profile() {
    drop(HEAP_PROFILER.lock().unwrap_or_else(|p| p.into_inner()).take());
}

fn main() -> ExitCode {
    #[cfg(feature = "dhat-heap")]
    {
        *HEAP_PROFILER.lock().unwrap_or_else(|p| p.into_inner()) = Some(dhat::Profiler::new_heap());
    }
    let code = run();
    #[cfg(feature = "dhat-heap")]
    write_heap_profile();
    code
}

fn run() -> ExitCode {
    // Run by kubectl as `kubectl_complete-gpu_shopper WORDS...`: answer its completion.
    if executable_name().starts_with("kubectl_complete-") {
        let words: Vec<String> = std::env::args().skip(1).collect();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let (candidates, directive) = runtime.block_on(gpu_shopper::cli::complete::candidates(&Cli::command(), &words));
        for candidate in candidates {
            println!("{candidate}");
        }
        println!(":{directive}");
        return ExitCode::SUCCESS;
    }
    let name = invoked_as();
    let matches = Cli::command()
        .bin_name(&name)
        .mut_subcommand("controller", |c| c.mut_args(gpu_shopper::config::blank_env_is_unset))
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    gpu_shopper::cli::set_globals(cli.globals);
    match cli.command {
        Command::Completion { shell } => {
            // Completions complete the executable's own name (kubectl completes its plugins itself).
            clap_complete::generate(shell, &mut Cli::command(), executable_name(), &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Wait(args) => user_command(gpu_shopper::cli::wait::run(args)),
        Command::UninstallGuard(args) => user_command(gpu_shopper::cli::guard::run(args)),
        Command::Crds => {
            print!("{}", crd::crds_yaml());
            ExitCode::SUCCESS
        }
        Command::Controller(args) => run_controller(*args),
        Command::Reference => {
            print!("{}", crd::reference::markdown());
            ExitCode::SUCCESS
        }
        Command::Simulate { market, port } => run_simulator(market, port),
        Command::Gateway(args) => run_gateway(args),
        Command::Offers(args) => user_command(gpu_shopper::cli::offers::run(args)),
        Command::Doctor(args) => user_command(gpu_shopper::cli::doctor::run(args)),
        Command::Cost(args) => user_command(gpu_shopper::cli::cost::run(args)),
        Command::Logs(args) => user_command(gpu_shopper::cli::logs::run(args)),
        Command::Cp(args) => user_command(gpu_shopper::cli::cp::run(args)),
        Command::SshConfig(args) => user_command(gpu_shopper::cli::ssh_config::run(args)),
        Command::PortForward(args) => user_command(gpu_shopper::cli::port_forward::run(args)),
        Command::Endpoint(args) => user_command(gpu_shopper::cli::endpoint::run(args)),
        Command::Status(args) => user_command(gpu_shopper::cli::status::run(args)),
        Command::Ssh(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            match runtime.block_on(gpu_shopper::cli::ssh::run(args)) {
                Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
                Err(error) => {
                    eprintln!("gpu-shopper: {error}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Runs a user command that prints its output.
fn user_command(future: impl std::future::Future<Output = Result<String, gpu_shopper::cli::CliError>>) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(future) {
        Ok(out) => {
            print!("{}", gpu_shopper::cli::terminal::printable(&out));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("gpu-shopper: {}", gpu_shopper::cli::terminal::printable(&error.to_string()));
            ExitCode::from(1)
        }
    }
}

fn run_gateway(args: gpu_shopper::gateway::GatewayArgs) -> ExitCode {
    let level = std::env::var("LOG_LEVEL").unwrap_or_else(|_| "info".into());
    let format = match std::env::var("LOG_FORMAT").as_deref() {
        Ok("json") => gpu_shopper::config::LogFormat::Json,
        _ => gpu_shopper::config::LogFormat::Text,
    };
    telemetry::init(&level, format);
    // Two worker threads: one SSH login and the client connections it carries.
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    match runtime.block_on(gpu_shopper::gateway::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gpu-shopper gateway: {error}");
            ExitCode::from(1)
        }
    }
}

fn run_simulator(market_path: Option<std::path::PathBuf>, port: u16) -> ExitCode {
    let market = match market_path {
        None => simulator::market::Market::builtin(),
        Some(path) => match std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| simulator::market::Market::from_text(&text).map_err(|e| e.to_string()))
        {
            Ok(market) => market,
            Err(error) => {
                eprintln!("gpu-shopper: cannot read the market file {}: {error}", path.display());
                return ExitCode::from(2);
            }
        },
    };
    telemetry::init("info", gpu_shopper::config::LogFormat::Text);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        let handle = match simulator::start(market, port).await {
            Ok(handle) => handle,
            Err(error) => {
                eprintln!("gpu-shopper: cannot listen on loopback: {error}");
                return ExitCode::FAILURE;
            }
        };
        println!("# simulated marketplaces; control endpoint: {}/state", handle.control_url);
        for (name, value) in handle.env() {
            println!("export {name}={value}");
        }
        let _ = tokio::signal::ctrl_c().await;
        ExitCode::SUCCESS
    })
}

fn run_controller(args: gpu_shopper::config::ControllerArgs) -> ExitCode {
    let config = match Config::from_args(args) {
        Ok(config) => Arc::new(config),
        Err(error) => {
            eprintln!("gpu-shopper: cannot start: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&config.log_level, config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let outcome = runtime.block_on(controller_main(config));
    // Nothing left over (a marketplace call, an SSH login) may keep a stopped leader alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("gpu-shopper: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn controller_main(config: Arc<Config>) -> Result<(), String> {
    #[cfg(not(feature = "dhat-heap"))]
    gpu_shopper::metrics::set_heap_reader(jemalloc_figures);
    #[cfg(feature = "dhat-heap")]
    if let Ok(mut requested) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()) {
        tokio::spawn(async move {
            requested.recv().await;
            write_heap_profile();
            tracing::warn!("heap profile written to dhat-heap.json (SIGUSR1); later allocations are not recorded");
        });
    }
    let metrics = Arc::new(Metrics::default());
    let (client, kube_config) = controller::kube_client::client(metrics.clone())
        .await
        .map_err(|e| format!("cannot connect to Kubernetes (set KUBECONFIG or run in a cluster): {e}"))?;
    let providers = config.credentials.configured();
    metrics.providers_configured.set(providers.len() as i64);
    if providers.is_empty() {
        tracing::warn!(
            "no marketplace credentials configured: sessions will wait with reason NoProvidersConfigured until VASTAI_API_KEY, TENSORDOCK_AUTH_ID + TENSORDOCK_API_TOKEN or RUNPOD_API_KEY is set"
        );
    }
    let health = Arc::new(Health { ready: false.into(), standby: false.into(), providers, metrics: metrics.clone() });
    let http_addr = config.http_addr;
    let server = tokio::spawn(http::serve(http_addr, health.clone()));
    let policy = CallPolicy { timeout: config.provider_call_timeout, ..CallPolicy::default() };
    let providers = gpu_shopper::provider::from_config(&config, &policy)
        .into_iter()
        .map(|p| gpu_shopper::provider::metered::Metered::wrap(p, metrics.clone()))
        .collect();
    // Who this installation is: the deployment id and the cluster it runs in.
    let cluster =
        controller::identity::cluster_id(&client, config.cluster_id.as_deref()).await.map_err(|e| e.to_string())?;
    let config = Arc::new(Config { cluster_id: Some(cluster), ..(*config).clone() });
    let ctx = Arc::new(Context::new(client, kube_config, config, providers, metrics));
    tokio::select! {
        result = controller::run(ctx, health) => result.map_err(|e| e.to_string()),
        result = server => Err(match result {
            Ok(Ok(())) => "the HTTP server stopped".to_string(),
            Ok(Err(e)) => format!("cannot serve health and metrics on {http_addr}: {e}"),
            Err(e) => format!("the HTTP server failed: {e}"),
        }),
    }
}
