/*
 * peakrss: run a command and report its peak resident set size.
 *
 *   peakrss OUTFILE COMMAND [ARG...]
 *
 * Writes the child's ru_maxrss (KiB, from wait4) to OUTFILE and exits the
 * way the child did (same status, or the same signal).  stdin, stdout and
 * stderr are passed through untouched.
 *
 * Why not just os.wait4 from the benchmark: Linux records the RSS high-water
 * mark of the old address space into the new process's maxrss at exec, and
 * a child spawned with vfork (as Python's subprocess and posix_spawn do)
 * execs from its parent's address space.  A VMM smaller than the spawning
 * Python interpreter would then report the interpreter's peak.  Forked from
 * this small program instead, that inherited floor is negligible.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct rusage ru;
	int status;
	pid_t pid, r;
	FILE *f;

	if (argc < 3) {
		fprintf(stderr, "usage: peakrss OUTFILE COMMAND [ARG...]\n");
		return 2;
	}
	pid = fork();
	if (pid < 0) {
		fprintf(stderr, "peakrss: fork: %s\n", strerror(errno));
		return 127;
	}
	if (pid == 0) {
		execvp(argv[2], argv + 2);
		fprintf(stderr, "peakrss: %s: %s\n", argv[2], strerror(errno));
		_exit(127);
	}
	/* Leave termination signals to the child; report once it is gone. */
	signal(SIGINT, SIG_IGN);
	signal(SIGQUIT, SIG_IGN);
	do
		r = wait4(pid, &status, 0, &ru);
	while (r < 0 && errno == EINTR);
	if (r < 0) {
		fprintf(stderr, "peakrss: wait4: %s\n", strerror(errno));
		return 127;
	}
	f = fopen(argv[1], "w");
	if (!f || fprintf(f, "%ld\n", ru.ru_maxrss) < 0 || fclose(f) != 0) {
		fprintf(stderr, "peakrss: %s: %s\n", argv[1], strerror(errno));
		return 127;
	}
	if (WIFSIGNALED(status)) {
		signal(WTERMSIG(status), SIG_DFL);
		raise(WTERMSIG(status));
		return 128 + WTERMSIG(status);
	}
	return WEXITSTATUS(status);
}
