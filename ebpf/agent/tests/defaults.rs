//! The agent's defaults must describe the pods the webhook injects.

#[test]
fn sidecar_port_and_container_match_the_injection_webhook() {
    let inject = vigie_inject::InjectConfig::default();
    assert_eq!(vigie_egress::DEFAULT_SIDECAR_PORT, inject.proxy_port);
    assert_eq!(
        vigie_egress::DEFAULT_SIDECAR_CONTAINER,
        vigie_inject::SIDECAR_NAME
    );
    assert_eq!(vigie_egress::pods::ENROL_LABEL, vigie_inject::ENROL_LABEL);
}
