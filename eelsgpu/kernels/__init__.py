"""Per-equation kernels: pure functions of arrays and floats, written once against the array API.

Nothing here imports dask, xarray, zarr or file I/O; a kernel module imports only
:mod:`eelsgpu._xp` (shared numerics), :mod:`eelsgpu.physics` (constants and kinematics),
:mod:`eelsgpu.errors`, :mod:`.declare` and lower kernel modules. The same code runs on NumPy, CuPy
and array-api-strict.

Layers of eelsgpu (imports point down only; ``tests/test_layers.py`` checks it):

1. ``eelsgpu.cli``
2. ``eelsgpu.batch``, ``eelsgpu.report``, ``eelsgpu.plotting``
3. ``eelsgpu.analysis`` (the xarray-facing functions), ``eelsgpu.synthetic``, ``eelsgpu.interop``
4. ``eelsgpu.io``
5. ``eelsgpu.engine``
6. ``eelsgpu.model``
7. ``eelsgpu.kernels``
8. ``eelsgpu._xp``, ``eelsgpu.physics``, ``eelsgpu.errors``

Low-loss kernels, bottom up (each imports only those above it in this list):

========================  =================================================================:mod:`._fused`            registry slot for device-fused kernels (the engine fills it)
:mod:`.zlp`               the zero-loss peak: centre, sub-channel shift, the ZLP models (eqs. 13-14)
:mod:`.fourier_log`       Fourier-log deconvolution (eqs. 18-25)
:mod:`.tails`             the power-law tail of a spectrum beyond the window
:mod:`.log_ratio`         log-ratio t/lambda (eq. 16), t/lambda from an SSD (eqs. 14, 15, 17)
:mod:`.mean_free_path`    inelastic mean free paths (Iakoubovskii 2008, Malis 1988)
:mod:`.loss_grid`         the loss grid E_k = k dE and the SSD's extrapolations below E_c and beyond
:mod:`.sum_rule`          the Kramers-Kronig sum rule: thickness (eqs. 26-29)
:mod:`.dielectric`        the dielectric function from the SSD (eqs. 31-34)
:mod:`.surface`           surface losses and the surface-corrected solve (eqs. 35-36)
:mod:`.optics`            n, k, mu, n_eff, plasmon energy, loss peak, Cerenkov test
:mod:`.blocks_lowloss`    the composite per-block kernels of the low-loss analyses, declared
:mod:`.blocks_kk`         the Kramers-Kronig block kernel, declared
========================  =================================================================
Equations of ``shared/docs/kk-theory.md`` and the one function that computes each
(Egerton 2011 for the numbers in brackets):

=========  =====================================================  =========================eq.        what                                                   computed by
=========  =====================================================  =========================13, 14     I = N0 R + I_inel; the ZLP N0 R(E) and N0              :func:`.zlp.zlp_kernel` (the
                                                                  models of :data:`.zlp.MODELS`)
15, 17     N_1 = N0 t/lambda: t/lambda as the SSD's integral      :func:`.log_ratio.t_over_lambda_from_ssd`
16         t/lambda = ln(I_t / N0), the log-ratio [5.11]          :func:`.log_ratio.log_ratio_kernel`
16         its tail beyond the window, never negative             :func:`.log_ratio.log_ratio_maps`
14         the ZLP model checked against the data                 :func:`.zlp.zlp_model_checks`
18, 22     SSD = N0 F^-1[ln(F[J] / F[Z])], the Fourier-log        :func:`.fourier_log.fourier_log_kernel`
22         the measured error of ln(J~/Z~): the roll-off          :func:`.fourier_log.error_power`
           pre-issue-11 core, fixed roll-off (fused CUDA, unused) :func:`.fourier_log.log_spectrum_ratio`
23-25      discrete transforms, the energy origin's phase         :func:`.fourier_log.fourier_log_kernel`
26         t = 4 a0 F E0 J / (N0 (1 - Re[1/eps(0)]))             :func:`.sum_rule.thickness_from_integral_nm`
                                                                  (from an SSD:
                                                                  :func:`.sum_rule.sum_rule_thickness_nm`)
26         4 a0 F E0, its prefactor (nm eV)                       :func:`.sum_rule.sum_rule_prefactor_nm_eV`
26, 29     J = int SSD / (E ln(1 + beta^2/theta_E^2)) dE          :func:`.sum_rule.sum_rule_integral_rows`
                                                                  (per N0: :func:`.sum_rule.kk_sum_rule_integral`)
26 inv.    n from a known thickness                               :func:`.sum_rule.refractive_index_from_thickness`
27         theta_E = E / (gamma m0 v^2)                           :func:`eelsgpu.physics.characteristic_angle_mrad`
28         1 - Re[1/eps(0)] from n, or a metal                    :func:`.sum_rule.sum_rule_normalisation`
29         t = A / N0 int ...; A calibrated                       :func:`.blocks_lowloss.kk_thickness_kernel`
31         Im[-1/eps] from the SSD                                :func:`.dielectric.loss_function_from_ssd`
31 inv.    the SSD of a loss function (per eV, nm)                :func:`.dielectric.ssd_from_loss_function`
                                                                  (:func:`.dielectric.bulk_loss_per_eV_nm`)
31         ln(1 + beta^2/theta_E^2); pi a0 m0 v^2                 :func:`.sum_rule.angular_factor`;
                                                                  :func:`.dielectric.loss_prefactor_nm_eV`
32         Re[1/eps] by the Kramers-Kronig transform              :func:`.dielectric.re_inverse_eps`
33         Re[1/eps(0)] sum rule (normalisation)                  :func:`.dielectric.kk_single_pass`
34         eps from Re[1/eps] and Im[-1/eps]                      :func:`.dielectric.eps_from_inverse`
after 34   mu(E), n(E), k(E); eps1 = 0 crossing                   :func:`.optics.absorption_coefficient_per_nm`,
                                                                  :func:`.optics.refractive_index_nk`,
                                                                  :func:`.optics.plasmon_energy_eV`
35         I = N0 R + I_inel + I_S, solved for the bulk part      :func:`.surface.solve_surface`
36         I_S, the surface loss of a film [4.31]                 :func:`.surface.surface_loss_per_eV`
16 var     var(t/lambda) = 1/N0 - 1/I (counting, gain g: times g) :func:`.uncertainty.log_ratio_variance`
16 var     sigma(t) = lambda sigma(t/lambda); lambda's part apart :func:`.uncertainty.thickness_sigma_nm`
18-22 var  var(SSD_k) by the linearised Fourier-log (FFT convs)  :func:`.uncertainty.fourier_log_ssd_variance`
18-22 var  var(sum a_k SSD_k): KK thickness, t/lambda (eq. 17)   :func:`.uncertainty.fourier_log_functional_variance`
fit cov    (J^T W J)^-1 J^T W V W J (J^T W J)^-1 (band gap)       :func:`.uncertainty.sandwich_covariance`
noise      var(x) = g x; g from the data's 4th differences        :func:`.uncertainty.poisson_variance`,
                                                                  :func:`.uncertainty.estimate_gain`
noise      K replicas g Poisson(x/g) per pixel, mean and std      :func:`.uncertainty.draw_replicas`,
                                                                  :func:`.uncertainty.replica_moments`
31 (film)  bulk, retarded, closed aperture integral (thin-film    :func:`.film.bulk_closed`
           notes 1.2; eq. 31 without retardation)
36 (film)  one uncoupled NR interface; two vacuum faces: eq. 36   :func:`.film.interface_closed`
film 1.4   Ritchie's coupled non-retarded film                    :func:`.film.ritchie_surface`
film 1.5   Kroger's retarded slab (phi_ea with eps + eps_a)       :func:`.film.kroger_surface`
film 1.6   layered slab (oxide/metal/oxide), TM fields            :func:`.film.layered_phi`
film 3.3   the pole-panelled angular rule; channels, resolution   :func:`.film.film_loss`,
                                                                  :func:`.film.channel_matrix`
film 2     Drude + Lorentz eps and d eps/d ln p                   :func:`.oscillators.eps_and_derivatives`
film 3     Poisson-deviance Levenberg-Marquardt, covariance       :func:`.film_fit.fit_pixels`
31-34 var  var, cov of Im[-1/eps], Re[1/eps]: the KK pass         :func:`.uncertainty.kk_inverse_eps_covariance`
           linearised (rank-one terms + Hilbert transforms)
32 var     var(H[x]): squared kernel (*) channel variance, FFT    :func:`.uncertainty.odd_hilbert_variance`
34 var     cov(eps1, eps2) by eq. 34's Jacobian; var n(E)         :func:`.uncertainty.eps_covariance_from_inverse`,
                                                                  :func:`.uncertainty.refractive_index_variance`
28,33 sys  dK/K of a given n: 2 (dn/n) / (n^2 - 1)                :func:`.uncertainty.normalisation_rel_sigma`
31-34 sys  d eps = (eps^2 - eps) dK/K; n(E) and E_p moved with it :func:`.uncertainty.eps_normalisation_sigmas`,
                                                                  :func:`.uncertainty.plasmon_crossing_shift_eV`
=========  =====================================================  ========================="""
