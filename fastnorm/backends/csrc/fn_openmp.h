/* fn_openmp.h: releasing the OpenMP thread pool before a fork */
#ifndef FASTNORM_FN_OPENMP_H
#define FASTNORM_FN_OPENMP_H

/* OpenMP 5.0's omp_pause_resource_all releases the calling thread's thread pool, so that
   a process forked afterwards starts a fresh one (GNU OpenMP's pool does not survive a
   fork: the child would hang in its first parallel region).  It is looked up at run time
   in the OpenMP runtime this module uses (the library holding omp_get_max_threads): a
   link-time reference would carry the OMP_5.0 symbol version, which a runtime without it
   (GCC < 9) refuses, and the module would not import.  The soft pause: libgomp treats
   both kinds alike, and LLVM's libomp, which survives fork by itself, keeps its threads. */
#if defined(_OPENMP) && defined(__ELF__)
  #include <dlfcn.h>
  #include <omp.h>
  static int fn_openmp_pause(void) {
      static int (*pause_all)(int) = NULL;
      static int looked_up = 0;
      if (!looked_up) {
          Dl_info info;
          void* runtime;
          if (dladdr((void*)&omp_get_max_threads, &info) && info.dli_fname != NULL
                  && (runtime = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD)) != NULL)
              *(void**)&pause_all = dlsym(runtime, "omp_pause_resource_all");
          looked_up = 1;
      }
      return pause_all != NULL ? pause_all(1 /* omp_pause_soft */) : -1;
  }
#else
  static int fn_openmp_pause(void) { return -1; }
#endif

#endif  /* FASTNORM_FN_OPENMP_H */
