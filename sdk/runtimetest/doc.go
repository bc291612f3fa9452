// Package runtimetest is a conformance kit for task-executor runtime
// plugins: a runtime runs it against itself to show that it keeps the
// contract of sdk.Runtime the way the host relies on it.
//
// A runtime provides a Harness, which knows how to start an instance of the
// runtime (usually the plugin binary, over real gRPC; see LaunchPlugin), how
// to turn a POSIX shell script into a task spec of its kind and how to read a
// task's output. Run then drives the runtime through exit codes, environment,
// working directory, start errors, output, stop and grace periods, timeouts,
// events, idempotent starts, concurrency, and recovery after the plugin
// process is killed:
//
//	func TestConformance(t *testing.T) {
//		runtimetest.Run(t, myHarness{})
//	}
//
// A harness may say more, and the kit checks that too: where a task that
// names no working directory runs (DefaultDirer), the specs its runtime
// refuses that the host would let through, such as bad runtime options
// (Refuser: Validate must refuse them, and Init must let the host ask),
// what the runtime keeps outside the data directory (DataDirCleaner), and
// how slow its stops may be (StopSlacker). BuildPlugin builds a plugin and
// the shim for a test main, with the race detector when the tests have it.
//
// The kit plays the host's part: it creates a data directory and one
// directory per task in it, gives tasks unique DNS-1123 names, calls Init on
// every instance it launches, and stops every task it started (and closes
// every instance) before a test ends, even one that failed, so that no
// process outlives the test.
package runtimetest
