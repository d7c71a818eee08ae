// The bisection of Kernels::lower_kth, shared by the kernel files that implement
// it (each brings its own min / max and counting pass).  Included inside each
// file's anonymous namespace, so every copy is compiled with that file's flags
// and stays internal to it.

// Given lo <= hi, the minimum and maximum of the values, and count_ge(t) = how
// many values are >= t: a value x with count_ge(x) >= r, at most (hi - lo) / 4096
// below the r-th largest (12 halvings of [lo, hi]).
template <class CountGe>
float bisect_kth(float lo, float hi, size_t r, CountGe count_ge) {
    if (count_ge(hi) >= r) return hi;
    for (int it = 0; it < 12; ++it) {  // invariant: at least r values >= lo
        const float mid = lo + (hi - lo) * 0.5f;
        if (!(mid > lo && mid < hi)) break;
        if (count_ge(mid) >= r) lo = mid;
        else hi = mid;
    }
    return lo;
}
