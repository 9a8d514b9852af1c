using BenchmarkDotNet.Running;
using QwQ.Cuda.Bench;

// `kernels`: event-timed GPU kernel table (GB/s against the measured copy bandwidth).
// Anything else goes to BenchmarkDotNet, e.g. `--filter *Tokenizer*` or `--filter *Gemv*`.
if (args.Length > 0 && args[0] == "kernels")
    return KernelBenchmarks.Run(Console.Out);
BenchmarkSwitcher.FromAssembly(typeof(GemvBenchmarks).Assembly).Run(args);
return 0;
