/*
 * LD_PRELOAD helper for starting sanlock in a sandbox without CAP_SYS_RESOURCE:
 * sanlock raises RLIMIT_MEMLOCK at start and exits when that fails. This clamps a
 * setrlimit() request that exceeds the hard limit to the hard limit. Used by the test
 * harness only, and only when sanlock does not start without it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/resource.h>

typedef int (*setrlimit_fn)(__rlimit_resource_t, const struct rlimit *);

int setrlimit(__rlimit_resource_t resource, const struct rlimit *want)
{
	static setrlimit_fn next;
	struct rlimit have, clamped;

	if (!next)
		next = (setrlimit_fn)dlsym(RTLD_NEXT, "setrlimit");
	if (next(resource, want) == 0)
		return 0;
	if (errno != EPERM || getrlimit(resource, &have) != 0)
		return -1;
	clamped.rlim_max = have.rlim_max;
	clamped.rlim_cur = want->rlim_cur > have.rlim_max ? have.rlim_max : want->rlim_cur;
	return next(resource, &clamped);
}
