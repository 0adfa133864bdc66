//! Credential formats, written from the providers' own descriptions of their token formats
//! (prefix, alphabet, length, embedded checksum). Three kinds:
//!
//! - [`TOKEN_RULES`]: a distinctive prefix then a body of known alphabet and length;
//! - [`CUSTOM`]: formats that need code (PEM blocks, JWTs, URLs with passwords, tokens whose
//!   distinctive part is in the middle);
//! - [`CONTEXT_RULES`]: formats with no prefix, recognised only next to a provider keyword.
//!
//! Nothing here is copied from another scanner's rule files; where a provider documents no
//! format, there is no rule (the generic assignment rule still catches high-entropy values).

use super::{Check, ContextRule, Hit, RuleInfo, TokenRule};
use crate::finding::{Category, Confidence, Severity};
use crate::spec::{
    class, in_class, match_at, Seg, ALNUM, ALPHA, B64, B64URL, DIGIT, HEX, HEX_LOWER, LOWER_ALNUM,
    UPPER_ALNUM,
};
use crate::validate::{b64_decode, is_documented_example, is_placeholder};

use Seg::{Lit, Run};
use Severity::{Critical, High, Medium};

const B64URL_DOT: crate::spec::Class = class(b"A-Za-z0-9_.-");
const B64_PAD: crate::spec::Class = class(b"A-Za-z0-9+/=");
const B64ANY: crate::spec::Class = class(b"A-Za-z0-9+/=_-");
const B64URL_EQ: crate::spec::Class = class(b"A-Za-z0-9_=-");
const SLACK_BODY: crate::spec::Class = class(b"A-Za-z0-9-");
const BECH32_UP: crate::spec::Class = class(b"QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L");
const AWS_ID: crate::spec::Class = UPPER_ALNUM;
const WORDISH: crate::spec::Class = class(b"A-Za-z0-9_");

const UUID: &[Seg] = &[
    Run(HEX, 8, 8),
    Lit(b"-"),
    Run(HEX, 4, 4),
    Lit(b"-"),
    Run(HEX, 4, 4),
    Lit(b"-"),
    Run(HEX, 4, 4),
    Lit(b"-"),
    Run(HEX, 12, 12),
];

const GH36: &[Seg] = &[Run(ALNUM, 36, 36)];

/// Prefix-anchored token formats.
pub(crate) const TOKEN_RULES: &[TokenRule] = &[
    // --- cloud providers
    TokenRule::new("aws-access-key-id", "AWS access key id (long-term AKIA, temporary ASIA, ABIA, ACCA)", Critical,
        &["AKIA", "ASIA", "ABIA", "ACCA"], &[Run(AWS_ID, 16, 16)]).entropy(2.8),
    TokenRule::new("aws-bedrock-api-key", "Amazon Bedrock long-term API key (ABSK + base64 of BedrockAPIKey-...)", Critical,
        &["ABSKQmVkcm9ja0FQSUtleS"], &[Run(B64_PAD, 20, 400)]),
    TokenRule::new("aws-bedrock-short-term-key", "Amazon Bedrock short-term API key (bedrock-api-key- + base64 presigned URL)", High,
        &["bedrock-api-key-"], &[Run(B64_PAD, 28, 8192)]).check(Check::BedrockPresigned),
    TokenRule::new("gcp-api-key", "Google API key (GCP, Gemini / AI Studio, Firebase, Maps): AIza + 35", High,
        &["AIza"], &[Run(B64URL, 35, 35)]).entropy(3.0),
    TokenRule::new("gcp-oauth-client-secret", "Google OAuth client secret (GOCSPX-)", High,
        &["GOCSPX-"], &[Run(B64URL, 28, 28)]),
    TokenRule::new("google-oauth-access-token", "Google OAuth 2.0 access token (ya29.)", High,
        &["ya29."], &[Run(B64URL_DOT, 30, 2048)]).entropy(3.0),
    TokenRule::new("alibaba-access-key-id", "Alibaba Cloud AccessKey id (LTAI)", High,
        &["LTAI"], &[Run(ALNUM, 12, 20)]).entropy(3.0),
    TokenRule::new("yandex-api-key", "Yandex Cloud API key (AQVN)", High,
        &["AQVN"], &[Run(B64URL, 35, 38)]).entropy(3.2),
    TokenRule::new("digitalocean-personal-access-token", "DigitalOcean personal access token (dop_v1_)", Critical,
        &["dop_v1_"], &[Run(HEX_LOWER, 64, 64)]),
    TokenRule::new("digitalocean-oauth-token", "DigitalOcean OAuth access token (doo_v1_)", High,
        &["doo_v1_"], &[Run(HEX_LOWER, 64, 64)]),
    TokenRule::new("digitalocean-refresh-token", "DigitalOcean OAuth refresh token (dor_v1_)", High,
        &["dor_v1_"], &[Run(HEX_LOWER, 64, 64)]),
    TokenRule::new("heroku-api-key", "Heroku platform API key (HRKU-)", High,
        &["HRKU-"], &[Run(B64URL, 40, 80)]).entropy(3.2),
    TokenRule::new("fly-io-token", "Fly.io access token (fo1_, fm1r_, fm1a_, fm2_ macaroons)", High,
        &["fo1_"], &[Run(B64URL, 40, 48)]).entropy(3.2),
    TokenRule::new("fly-io-token", "Fly.io access token (fo1_, fm1r_, fm1a_, fm2_ macaroons)", High,
        &["fm1r_", "fm1a_", "fm2_"], &[Run(B64ANY, 60, 8192)]).entropy(3.2),
    TokenRule::new("cloudflare-origin-ca-key", "Cloudflare Origin CA key (v1.0-)", High,
        &["v1.0-"], &[Run(HEX_LOWER, 24, 24), Lit(b"-"), Run(HEX_LOWER, 146, 146)]),
    TokenRule::new("supabase-access-token", "Supabase personal access token (sbp_)", High,
        &["sbp_"], &[Run(HEX_LOWER, 40, 40)]),
    TokenRule::new("supabase-secret-key", "Supabase secret API key (sb_secret_)", Critical,
        &["sb_secret_"], &[Run(B64URL, 20, 64)]).entropy(3.0),
    TokenRule::new("planetscale-token", "PlanetScale service token, OAuth token or password (pscale_tkn_, pscale_oauth_, pscale_pw_)", Critical,
        &["pscale_tkn_", "pscale_oauth_", "pscale_pw_"], &[Run(class(b"A-Za-z0-9=._-"), 32, 64)]).entropy(3.0),
    TokenRule::new("databricks-token", "Databricks personal access token (dapi + 32 hex)", High,
        &["dapi"], &[Run(HEX_LOWER, 32, 32)]),
    TokenRule::new("neon-api-key", "Neon API key (napi_)", High,
        &["napi_"], &[Run(LOWER_ALNUM, 64, 64)]),
    TokenRule::new("render-api-key", "Render API key (rnd_)", High,
        &["rnd_"], &[Run(ALNUM, 32, 32)]).entropy(3.2),
    TokenRule::new("vercel-blob-token", "Vercel Blob read-write token (vercel_blob_rw_)", High,
        &["vercel_blob_rw_"], &[Run(ALNUM, 16, 16), Lit(b"_"), Run(ALNUM, 30, 30)]),
    TokenRule::new("netlify-personal-access-token", "Netlify personal access token (nfp_)", High,
        &["nfp_"], &[Run(ALNUM, 36, 40)]).entropy(3.2),
    TokenRule::new("hashicorp-vault-token", "HashiCorp Vault service, batch or recovery token (hvs., hvb., hvr.)", Critical,
        &["hvs.", "hvb.", "hvr."], &[Run(B64URL, 90, 400)]).entropy(3.5),
    TokenRule::new("doppler-token", "Doppler token (dp.pt., dp.st., dp.sa., dp.ct., dp.scim., dp.audit.)", High,
        &["dp.pt.", "dp.st.", "dp.sa.", "dp.ct.", "dp.scim.", "dp.audit."], &[Run(ALNUM, 40, 44)]).entropy(3.2),
    TokenRule::new("pulumi-access-token", "Pulumi access token (pul-)", High,
        &["pul-"], &[Run(HEX_LOWER, 40, 40)]),
    TokenRule::new("dynatrace-api-token", "Dynatrace API token (dt0c01.)", High,
        &["dt0c01."], &[Run(ALNUM, 24, 24), Lit(b"."), Run(ALNUM, 64, 64)]),
    TokenRule::new("openshift-user-token", "OpenShift user OAuth token (sha256~)", High,
        &["sha256~"], &[Run(B64URL, 43, 43)]).entropy(3.5),
    // --- source hosting and package registries
    TokenRule::new("github-personal-access-token", "GitHub classic personal access token (ghp_, CRC32 checksum)", Critical,
        &["ghp_"], GH36).check(Check::Crc32Base62),
    TokenRule::new("github-oauth-token", "GitHub OAuth access token (gho_, CRC32 checksum)", Critical,
        &["gho_"], GH36).check(Check::Crc32Base62),
    TokenRule::new("github-user-to-server-token", "GitHub App user-to-server token (ghu_, CRC32 checksum)", Critical,
        &["ghu_"], GH36).check(Check::Crc32Base62),
    TokenRule::new("github-server-to-server-token", "GitHub App installation token (ghs_, CRC32 checksum)", Critical,
        &["ghs_"], GH36).check(Check::Crc32Base62),
    TokenRule::new("github-refresh-token", "GitHub App refresh token (ghr_, CRC32 checksum)", Critical,
        &["ghr_"], GH36).check(Check::Crc32Base62),
    TokenRule::new("github-fine-grained-pat", "GitHub fine-grained personal access token (github_pat_)", Critical,
        &["github_pat_"], &[Run(WORDISH, 82, 82)]).entropy(3.5),
    TokenRule::new("gitlab-personal-access-token", "GitLab personal, project or group access token (glpat-)", Critical,
        &["glpat-"], &[Run(B64URL_DOT, 20, 80)]).entropy(3.0),
    TokenRule::new("gitlab-deploy-token", "GitLab deploy token (gldt-)", High,
        &["gldt-"], &[Run(B64URL_DOT, 20, 80)]).entropy(3.0),
    TokenRule::new("gitlab-runner-token", "GitLab runner authentication token (glrt-)", High,
        &["glrt-"], &[Run(B64URL_DOT, 20, 80)]).entropy(3.0),
    TokenRule::new("gitlab-runner-registration-token", "GitLab runner registration token (GR1348941)", High,
        &["GR1348941"], &[Run(B64URL, 20, 20)]).entropy(3.0),
    TokenRule::new("gitlab-ci-build-token", "GitLab CI/CD job token (glcbt-)", High,
        &["glcbt-"], &[Run(B64URL_DOT, 20, 80)]).entropy(3.0),
    TokenRule::new("gitlab-pipeline-trigger-token", "GitLab pipeline trigger token (glptt-)", High,
        &["glptt-"], &[Run(B64URL_DOT, 20, 80)]).entropy(3.0),
    TokenRule::new("gitlab-oauth-app-secret", "GitLab OAuth application secret (gloas-)", High,
        &["gloas-"], &[Run(B64URL_DOT, 20, 80)]).entropy(3.0),
    TokenRule::new("gitlab-feed-token", "GitLab feed token (glft-)", Medium,
        &["glft-"], &[Run(B64URL_DOT, 20, 80)]).entropy(3.0),
    TokenRule::new("gitlab-incoming-mail-token", "GitLab incoming mail token (glimt-)", Medium,
        &["glimt-"], &[Run(B64URL_DOT, 20, 80)]).entropy(3.0),
    TokenRule::new("gitlab-agent-token", "GitLab agent for Kubernetes token (glagent-)", High,
        &["glagent-"], &[Run(B64URL_DOT, 20, 80)]).entropy(3.0),
    TokenRule::new("gitlab-feature-flag-token", "GitLab feature flags client token (glffct-)", Medium,
        &["glffct-"], &[Run(B64URL_DOT, 20, 80)]).entropy(3.0),
    TokenRule::new("gitlab-scim-token", "GitLab SCIM OAuth token (glsoat-)", High,
        &["glsoat-"], &[Run(B64URL_DOT, 20, 80)]).entropy(3.0),
    TokenRule::new("gitlab-session-cookie", "GitLab session cookie (_gitlab_session=)", High,
        &["_gitlab_session="], &[Run(LOWER_ALNUM, 32, 32)]).entropy(3.0).no_left_boundary(),
    TokenRule::new("atlassian-api-token", "Atlassian API token (ATATT3)", High,
        &["ATATT3"], &[Run(B64URL_EQ, 150, 260)]).entropy(3.5),
    TokenRule::new("bitbucket-app-password", "Bitbucket app password (ATBB)", High,
        &["ATBB"], &[Run(ALNUM, 28, 40)]).entropy(3.2),
    TokenRule::new("bitbucket-access-token", "Bitbucket repository/project/workspace access token (ATCTT3)", High,
        &["ATCTT3"], &[Run(B64URL_EQ, 150, 260)]).entropy(3.5),
    TokenRule::new("npm-access-token", "npm access token (npm_, CRC32 checksum)", Critical,
        &["npm_"], GH36).check(Check::Crc32Base62),
    TokenRule::new("pypi-upload-token", "PyPI / TestPyPI API token (pypi-AgEIcHlwaS5vcmc, pypi-AgENdGVzdC5weXBpLm9yZw)", Critical,
        &["pypi-AgEIcHlwaS5vcmc", "pypi-AgENdGVzdC5weXBpLm9yZw"], &[Run(B64URL, 50, 2000)]).entropy(3.5),
    TokenRule::new("rubygems-api-key", "RubyGems API key (rubygems_)", High,
        &["rubygems_"], &[Run(HEX_LOWER, 48, 48)]),
    TokenRule::new("nuget-api-key", "NuGet API key (oy2 + 43)", High,
        &["oy2"], &[Run(LOWER_ALNUM, 43, 43)]).entropy(3.5),
    TokenRule::new("docker-hub-token", "Docker Hub personal or organization access token (dckr_pat_, dckr_oat_)", High,
        &["dckr_pat_", "dckr_oat_"], &[Run(B64URL, 20, 64)]).entropy(3.2),
    TokenRule::new("clojars-deploy-token", "Clojars deploy token (CLOJARS_)", High,
        &["CLOJARS_"], &[Run(ALNUM, 60, 60)]),
    TokenRule::new("artifactory-api-key", "JFrog Artifactory API key (AKCp)", High,
        &["AKCp"], &[Run(ALNUM, 69, 69)]).entropy(3.5),
    TokenRule::new("artifactory-reference-token", "JFrog Artifactory reference token (cmVmd)", High,
        &["cmVmd"], &[Run(ALNUM, 59, 59)]).entropy(3.5),
    TokenRule::new("sourcegraph-access-token", "Sourcegraph access token (sgp_)", High,
        &["sgp_local_"], &[Run(HEX, 40, 40)]),
    TokenRule::new("sourcegraph-access-token", "Sourcegraph access token (sgp_)", High,
        &["sgp_"], &[Run(HEX, 16, 16), Lit(b"_"), Run(HEX, 40, 40)]),
    TokenRule::new("postman-api-key", "Postman API key (PMAK-)", High,
        &["PMAK-"], &[Run(HEX_LOWER, 24, 24), Lit(b"-"), Run(HEX_LOWER, 34, 34)]),
    TokenRule::new("octopus-deploy-api-key", "Octopus Deploy API key (API- + 26)", High,
        &["API-"], &[Run(UPPER_ALNUM, 26, 26)]).entropy(3.5),
    TokenRule::new("harness-access-token", "Harness personal or service account token (pat., sat.)", High,
        &["pat.", "sat."], &[Run(B64URL, 22, 22), Lit(b"."), Run(ALNUM, 24, 24), Lit(b"."), Run(ALNUM, 20, 20)]),
    TokenRule::new("readme-api-key", "ReadMe API key (rdme_)", High,
        &["rdme_"], &[Run(ALNUM, 70, 70)]).entropy(3.5),
    TokenRule::new("prefect-api-key", "Prefect API key (pnu_)", High,
        &["pnu_"], &[Run(ALNUM, 36, 36)]).entropy(3.2),
    TokenRule::new("infracost-api-key", "Infracost API key (ico-)", Medium,
        &["ico-"], &[Run(ALNUM, 32, 32)]).entropy(3.2),
    TokenRule::new("terraform-cloud-token", "HCP Terraform / Terraform Cloud API token (.atlasv1.)", Critical,
        &[".atlasv1."], &[Run(B64URL, 60, 70)]).entropy(3.5).no_left_boundary(),
    // --- chat and messaging
    TokenRule::new("slack-bot-token", "Slack bot token (xoxb-)", High,
        &["xoxb-"], &[Run(DIGIT, 8, 14), Lit(b"-"), Run(SLACK_BODY, 8, 160)]).entropy(3.0),
    TokenRule::new("slack-user-token", "Slack user token (xoxp-)", High,
        &["xoxp-"], &[Run(DIGIT, 8, 14), Lit(b"-"), Run(SLACK_BODY, 8, 160)]).entropy(3.0),
    TokenRule::new("slack-legacy-token", "Slack legacy workspace, refresh or session token (xoxa-, xoxr-, xoxs-, xoxo-)", High,
        &["xoxa-", "xoxr-", "xoxs-", "xoxo-"], &[Run(SLACK_BODY, 10, 160)]).entropy(3.0),
    TokenRule::new("slack-app-token", "Slack app-level token (xapp-)", High,
        &["xapp-"], &[Run(DIGIT, 1, 2), Lit(b"-"), Run(SLACK_BODY, 30, 160)]).entropy(3.0),
    TokenRule::new("slack-config-token", "Slack configuration access or refresh token (xoxe.xoxp-, xoxe.xoxb-, xoxe-)", High,
        &["xoxe.xoxp-", "xoxe.xoxb-", "xoxe-"], &[Run(DIGIT, 1, 2), Lit(b"-"), Run(ALNUM, 40, 300)]).entropy(3.2),
    TokenRule::new("slack-webhook-url", "Slack incoming webhook URL (hooks.slack.com/services/T.../B.../...)", High,
        &["hooks.slack.com/services/"], &[Run(UPPER_ALNUM, 8, 12), Lit(b"/"), Run(UPPER_ALNUM, 8, 12), Lit(b"/"), Run(ALNUM, 20, 32)]).no_left_boundary(),
    TokenRule::new("slack-webhook-url", "Slack workflow or trigger webhook URL", High,
        &["hooks.slack.com/workflows/", "hooks.slack.com/triggers/"], &[Run(class(b"A-Za-z0-9/"), 30, 120)]).no_left_boundary(),
    TokenRule::new("discord-webhook-url", "Discord webhook URL (discord.com/api/webhooks/id/token)", High,
        &["discord.com/api/webhooks/", "discordapp.com/api/webhooks/"], &[Run(DIGIT, 17, 20), Lit(b"/"), Run(B64URL, 60, 70)]).no_left_boundary(),
    TokenRule::new("telegram-bot-token", "Telegram bot token in a Bot API URL", High,
        &["api.telegram.org/bot"], &[Run(DIGIT, 8, 10), Lit(b":"), Run(B64URL, 35, 35)]).no_left_boundary(),
    TokenRule::new("twilio-api-key", "Twilio API key SID (SK + 32 hex)", High,
        &["SK"], &[Run(HEX_LOWER, 32, 32)]).entropy(3.2),
    TokenRule::new("sendgrid-api-key", "SendGrid API key (SG.)", High,
        &["SG."], &[Run(class(b"A-Za-z0-9_=.-"), 60, 70)]).entropy(3.5),
    TokenRule::new("mailgun-api-key", "Mailgun legacy private API key (key- + 32 hex)", High,
        &["key-"], &[Run(HEX_LOWER, 32, 32)]).entropy(3.2),
    TokenRule::new("mailgun-public-key", "Mailgun public validation key (pubkey- + 32 hex)", Medium,
        &["pubkey-"], &[Run(HEX_LOWER, 32, 32)]).entropy(3.2),
    TokenRule::new("brevo-api-key", "Brevo (Sendinblue) API or SMTP key (xkeysib-, xsmtpsib-)", High,
        &["xkeysib-", "xsmtpsib-"], &[Run(HEX_LOWER, 64, 64), Lit(b"-"), Run(ALNUM, 16, 16)]),
    // --- payments and commerce
    TokenRule::new("stripe-secret-key", "Stripe secret key (sk_live_, sk_test_)", Critical,
        &["sk_live_", "sk_test_"], &[Run(ALNUM, 24, 247)]).entropy(3.0),
    TokenRule::new("stripe-restricted-key", "Stripe restricted key (rk_live_, rk_test_)", Critical,
        &["rk_live_", "rk_test_"], &[Run(ALNUM, 24, 247)]).entropy(3.0),
    TokenRule::new("stripe-webhook-secret", "Stripe webhook signing secret (whsec_)", High,
        &["whsec_"], &[Run(ALNUM, 32, 64)]).entropy(3.2),
    TokenRule::new("square-access-token", "Square access token (EAAA, sq0atp-)", Critical,
        &["EAAA"], &[Run(B64URL, 60, 60)]).entropy(3.2),
    TokenRule::new("square-access-token", "Square access token (EAAA, sq0atp-)", Critical,
        &["sq0atp-"], &[Run(B64URL, 22, 22)]).entropy(3.0),
    TokenRule::new("square-oauth-secret", "Square OAuth application secret (sq0csp-)", Critical,
        &["sq0csp-"], &[Run(B64URL, 43, 43)]).entropy(3.2),
    TokenRule::new("braintree-access-token", "PayPal Braintree access token (access_token$production$, $sandbox$)", Critical,
        &["access_token$production$", "access_token$sandbox$"], &[Run(LOWER_ALNUM, 16, 16), Lit(b"$"), Run(HEX_LOWER, 32, 32)]),
    TokenRule::new("shopify-access-token", "Shopify admin, custom or private app access token (shpat_, shpca_, shppa_)", Critical,
        &["shpat_", "shpca_", "shppa_"], &[Run(HEX, 32, 32)]),
    TokenRule::new("shopify-shared-secret", "Shopify app shared secret (shpss_)", High,
        &["shpss_"], &[Run(HEX, 32, 32)]),
    TokenRule::new("flutterwave-secret-key", "Flutterwave secret or encryption key (FLWSECK-, FLWSECK_TEST-)", High,
        &["FLWSECK-", "FLWSECK_TEST-"], &[Run(HEX_LOWER, 12, 32)]),
    TokenRule::new("plaid-access-token", "Plaid access token (access-sandbox-, access-development-, access-production-)", High,
        &["access-sandbox-", "access-development-", "access-production-"], UUID),
    TokenRule::new("shippo-api-key", "Shippo API token (shippo_live_, shippo_test_)", High,
        &["shippo_live_", "shippo_test_"], &[Run(HEX_LOWER, 40, 40)]),
    TokenRule::new("easypost-api-key", "EasyPost production or test API key (EZAK, EZTK)", High,
        &["EZAK", "EZTK"], &[Run(ALNUM, 54, 54)]).entropy(3.5),
    // --- LLM and AI providers
    TokenRule::new("openai-api-key", "OpenAI API key (sk-proj-, sk-svcacct-, sk-admin-, sk-None-)", Critical,
        &["sk-proj-", "sk-svcacct-", "sk-admin-", "sk-None-"], &[Run(B64URL, 40, 300)]).entropy(3.5).check(Check::OpenAiMarker),
    TokenRule::new("anthropic-api-key", "Anthropic API key (sk-ant-api03-)", Critical,
        &["sk-ant-api03-"], &[Run(B64URL, 80, 120)]).entropy(3.5),
    TokenRule::new("anthropic-admin-key", "Anthropic Admin API key (sk-ant-admin01-)", Critical,
        &["sk-ant-admin01-"], &[Run(B64URL, 80, 120)]).entropy(3.5),
    TokenRule::new("anthropic-oauth-token", "Anthropic OAuth access or refresh token (sk-ant-oat01-, sk-ant-ort01-)", Critical,
        &["sk-ant-oat01-", "sk-ant-ort01-"], &[Run(B64URL, 80, 120)]).entropy(3.5),
    TokenRule::new("openrouter-api-key", "OpenRouter API key (sk-or-v1-)", High,
        &["sk-or-v1-"], &[Run(HEX_LOWER, 64, 64)]),
    TokenRule::new("huggingface-token", "Hugging Face user access token (hf_)", High,
        &["hf_"], &[Run(ALPHA, 34, 34)]).entropy(3.5),
    TokenRule::new("huggingface-org-token", "Hugging Face organization API token (api_org_)", High,
        &["api_org_"], &[Run(ALPHA, 34, 34)]).entropy(3.5),
    TokenRule::new("groq-api-key", "Groq API key (gsk_)", High,
        &["gsk_"], &[Run(ALNUM, 52, 52)]).entropy(3.5),
    TokenRule::new("replicate-api-token", "Replicate API token (r8_)", High,
        &["r8_"], &[Run(ALNUM, 37, 37)]).entropy(3.5),
    TokenRule::new("perplexity-api-key", "Perplexity API key (pplx-)", High,
        &["pplx-"], &[Run(ALNUM, 40, 56)]).entropy(3.5),
    TokenRule::new("xai-api-key", "xAI (Grok) API key (xai-)", High,
        &["xai-"], &[Run(ALNUM, 80, 80)]).entropy(3.5),
    TokenRule::new("langsmith-api-key", "LangSmith API key (lsv2_pt_, lsv2_sk_)", High,
        &["lsv2_pt_", "lsv2_sk_"], &[Run(HEX_LOWER, 32, 32), Lit(b"_"), Run(HEX_LOWER, 10, 10)]),
    TokenRule::new("pinecone-api-key", "Pinecone API key (pcsk_)", High,
        &["pcsk_"], &[Run(B64URL, 40, 120)]).entropy(3.5),
    TokenRule::new("tavily-api-key", "Tavily API key (tvly-)", High,
        &["tvly-"], &[Run(B64URL, 32, 48)]).entropy(3.5),
    // --- observability and SaaS
    TokenRule::new("newrelic-user-api-key", "New Relic user API key (NRAK-)", High,
        &["NRAK-"], &[Run(UPPER_ALNUM, 27, 27)]).entropy(3.2),
    TokenRule::new("newrelic-insert-key", "New Relic insert key (NRII-)", High,
        &["NRII-"], &[Run(B64URL, 32, 32)]).entropy(3.2),
    TokenRule::new("newrelic-admin-key", "New Relic admin API key (NRAA-)", High,
        &["NRAA-"], &[Run(HEX_LOWER, 27, 27)]).entropy(3.2),
    TokenRule::new("newrelic-browser-key", "New Relic browser API key (NRJS-)", Medium,
        &["NRJS-"], &[Run(HEX_LOWER, 19, 19)]).entropy(3.0),
    TokenRule::new("sentry-org-token", "Sentry organization auth token (sntrys_ + base64 JSON)", High,
        &["sntrys_"], &[Run(class(b"A-Za-z0-9+/=_"), 60, 600)]).check(Check::Base64Json),
    TokenRule::new("sentry-user-token", "Sentry user auth token (sntryu_)", High,
        &["sntryu_"], &[Run(HEX_LOWER, 64, 64)]),
    TokenRule::new("grafana-service-account-token", "Grafana service account token (glsa_, CRC32 suffix)", High,
        &["glsa_"], &[Run(ALNUM, 32, 32), Lit(b"_"), Run(HEX_LOWER, 8, 8)]).check(Check::Crc32Hex8),
    TokenRule::new("grafana-cloud-token", "Grafana Cloud access policy token (glc_ + base64 JSON)", High,
        &["glc_"], &[Run(B64_PAD, 32, 600)]).check(Check::Base64Json),
    TokenRule::new("grafana-api-key", "Grafana legacy API key (base64 of {\"k\":...)", High,
        &["eyJrIjoi"], &[Run(B64_PAD, 40, 600)]).entropy(3.5),
    TokenRule::new("linear-api-key", "Linear personal API key (lin_api_)", High,
        &["lin_api_"], &[Run(ALNUM, 40, 40)]).entropy(3.5),
    TokenRule::new("linear-oauth-token", "Linear OAuth access token (lin_oauth_)", High,
        &["lin_oauth_"], &[Run(HEX_LOWER, 64, 64)]),
    TokenRule::new("notion-integration-token", "Notion integration token (ntn_, legacy secret_)", High,
        &["ntn_"], &[Run(DIGIT, 11, 11), Run(ALNUM, 35, 35)]).entropy(3.5),
    TokenRule::new("notion-integration-token", "Notion integration token (ntn_, legacy secret_)", High,
        &["secret_"], &[Run(ALNUM, 43, 43)]).entropy(3.8),
    TokenRule::new("airtable-personal-access-token", "Airtable personal access token (pat + 14 . 64 hex)", High,
        &["pat"], &[Run(ALNUM, 14, 14), Lit(b"."), Run(HEX_LOWER, 64, 64)]),
    TokenRule::new("hubspot-private-app-token", "HubSpot private app access token (pat-na1-, pat-eu1-)", High,
        &["pat-na1-", "pat-eu1-", "pat-na2-", "pat-ap1-"], UUID),
    TokenRule::new("contentful-management-token", "Contentful personal access token (CFPAT-)", High,
        &["CFPAT-"], &[Run(B64URL, 43, 43)]).entropy(3.5),
    TokenRule::new("onepassword-service-account-token", "1Password service account token (ops_ + base64 JSON)", Critical,
        &["ops_eyJ"], &[Run(B64ANY, 60, 4096)]).entropy(3.5),
    TokenRule::new("onepassword-secret-key", "1Password account Secret Key (A3-)", Critical,
        &["A3-"], &[Run(UPPER_ALNUM, 6, 6), Lit(b"-"), Run(UPPER_ALNUM, 5, 11), Lit(b"-"), Run(class(b"A-Z0-9-"), 17, 24)]).entropy(3.0),
    TokenRule::new("mapbox-secret-token", "Mapbox secret access token (sk.eyJ)", High,
        &["sk.eyJ"], &[Run(B64URL, 50, 300), Lit(b"."), Run(B64URL, 20, 40)]),
    TokenRule::new("dropbox-access-token", "Dropbox short-lived access token (sl.)", High,
        &["sl."], &[Run(B64URL, 130, 1400)]).entropy(3.5),
    TokenRule::new("facebook-access-token", "Meta (Facebook) Graph API access token (EAA...)", High,
        &["EAA"], &[Run(ALNUM, 90, 400)]).entropy(3.5),
    TokenRule::new("adobe-client-secret", "Adobe client secret (p8e-)", High,
        &["p8e-"], &[Run(ALNUM, 32, 32)]).entropy(3.2),
    TokenRule::new("settlemint-token", "SettleMint personal, application or service access token (sm_pat_, sm_aat_, sm_sat_)", High,
        &["sm_pat_", "sm_aat_", "sm_sat_"], &[Run(ALNUM, 16, 16)]).entropy(3.0),
    TokenRule::new("scalingo-api-token", "Scalingo API token (tk-us-)", High,
        &["tk-us-"], &[Run(B64URL, 48, 48)]).entropy(3.5),
    TokenRule::new("frameio-api-token", "Frame.io API token (fio-u-)", High,
        &["fio-u-"], &[Run(B64URL_EQ, 64, 64)]).entropy(3.5),
    TokenRule::new("defined-networking-api-key", "Defined Networking API key (dnkey-)", High,
        &["dnkey-"], &[Run(B64URL_EQ, 60, 100)]).entropy(3.5),
    TokenRule::new("typeform-api-token", "Typeform personal access token (tfp_)", High,
        &["tfp_"], &[Run(class(b"A-Za-z0-9_.=-"), 40, 70)]).entropy(3.5),
    TokenRule::new("intra42-client-secret", "42 Intra client secret (s-s4t2ud-, s-s4t2af-)", High,
        &["s-s4t2ud-", "s-s4t2af-"], &[Run(HEX_LOWER, 64, 64)]),
    TokenRule::new("age-secret-key", "age encryption secret key (AGE-SECRET-KEY-1, bech32 checksum)", Critical,
        &["AGE-SECRET-KEY-1"], &[Run(BECH32_UP, 58, 58)]).check(Check::Bech32),
];

/// Rules implemented as code, with their prefilter anchors (see [`custom_match`]).
pub(crate) const CUSTOM_RULES: &[RuleInfo] = &[
    info("private-key", "PEM private key block (RSA, EC, DSA, PKCS#8)", Critical),
    info("encrypted-private-key", "PEM encrypted private key block (PKCS#8 ENCRYPTED or Proc-Type ENCRYPTED)", High),
    info("openssh-private-key", "OpenSSH private key block", Critical),
    info("pgp-private-key-block", "OpenPGP private key block", Critical),
    info("putty-private-key", "PuTTY private key file (PuTTY-User-Key-File)", Critical),
    info("jwt", "JSON Web Token (header decodes to JSON with alg)", High),
    info("database-url-credentials", "Database URL with a password (postgres, mysql, mongodb(+srv), mssql, oracle, snowflake, clickhouse...)", Critical),
    info("broker-url-credentials", "Broker or cache URL with a password (redis, amqp, nats, mqtt, kafka)", Critical),
    info("url-credentials", "URL with user:password@ (http, https, ftp, ssh, git)", High),
    info("azure-storage-account-key", "Azure storage account key (AccountKey= in a connection string)", Critical),
    info("azure-sas-token", "Azure shared access signature (sig= with sv=)", High),
    info("azure-ad-client-secret", "Microsoft Entra ID (Azure AD) client secret (xxxNQ~...)", Critical),
    info("azure-devops-pat", "Azure DevOps personal access token (84 characters with AZDO signature)", High),
    info("openai-api-key", "OpenAI API key (sk-proj-, sk-svcacct-, sk-admin-, sk-None-)", Critical),
    info("mailchimp-api-key", "Mailchimp API key (32 hex + -usN)", High),
    info("newrelic-license-key", "New Relic license key (36 hex + NRAL)", High),
    info("telegram-bot-token", "Telegram bot token in a Bot API URL", High),
];

const fn info(id: &'static str, description: &'static str, severity: Severity) -> RuleInfo {
    RuleInfo {
        id,
        category: Category::SECRET,
        description,
        severity,
    }
}

/// Prefilter anchors of the custom rules. Matched case-insensitively; each function decides.
pub(crate) const CUSTOM_ANCHORS: &[&str] = &[
    "-----BEGIN ",
    "PuTTY-User-Key-File-",
    "eyJ",
    "://",
    "AccountKey=",
    "sig=",
    "Q~",
    "AZDO",
    "T3BlbkFJ",
    "-us",
    "NRAL",
    ":AA",
    "|",
];

/// Provider formats without a prefix, recognised next to a keyword.
pub(crate) const CONTEXT_RULES: &[ContextRule] = &[
    ctx(
        "aws-secret-access-key",
        "AWS secret access key (40 base64 next to an AWS secret keyword)",
        Critical,
        &[
            "aws_secret",
            "secret_access_key",
            "secretaccesskey",
            "aws-secret",
            "awssecret",
            "aws secret",
            "secret-access-key",
        ],
        &[Run(B64, 40, 40)],
        3.5,
    ),
    ctx(
        "aws-session-token",
        "AWS session token (next to aws_session_token)",
        High,
        &[
            "session_token",
            "sessiontoken",
            "security_token",
            "session-token",
        ],
        &[Run(B64_PAD, 100, 4096)],
        4.0,
    ),
    ctx(
        "gcp-service-account-key-id",
        "Google service account private_key_id",
        Medium,
        &["private_key_id"],
        &[Run(HEX_LOWER, 40, 40)],
        3.0,
    ),
    ctx(
        "twilio-auth-token",
        "Twilio auth token (32 hex next to twilio)",
        High,
        &["twilio"],
        &[Run(HEX_LOWER, 32, 32)],
        3.0,
    ),
    ctx(
        "datadog-api-key",
        "Datadog API key (32 hex next to datadog / DD_API_KEY)",
        High,
        &["datadog", "dd_api_key", "dd-api-key", "dd_apikey", "dd-api"],
        &[Run(HEX_LOWER, 32, 32)],
        3.0,
    ),
    ctx(
        "datadog-app-key",
        "Datadog application key (40 next to DD_APP_KEY)",
        High,
        &[
            "dd_app_key",
            "dd_application_key",
            "dd-application-key",
            "datadog_app",
            "dd-app-key",
            "datadog",
        ],
        &[Run(LOWER_ALNUM, 40, 40)],
        3.2,
    ),
    ctx(
        "cohere-api-key",
        "Cohere API key (40 next to cohere)",
        High,
        &["cohere", "co_api_key"],
        &[Run(ALNUM, 40, 40)],
        3.5,
    ),
    ctx(
        "mistral-api-key",
        "Mistral AI API key (32 next to mistral)",
        High,
        &["mistral"],
        &[Run(ALNUM, 32, 32)],
        3.5,
    ),
    ctx(
        "cloudflare-api-token",
        "Cloudflare API token (40 next to cloudflare / CF_API_TOKEN)",
        High,
        &[
            "cloudflare",
            "cf_api_token",
            "cf_token",
            "cf-api-token",
            "cf_api",
        ],
        &[Run(B64URL, 40, 40)],
        3.5,
    ),
    ctx(
        "cloudflare-global-api-key",
        "Cloudflare global API key (37 hex next to cloudflare / X-Auth-Key)",
        Critical,
        &["cloudflare", "cf_api_key", "x-auth-key", "cf_key"],
        &[Run(HEX_LOWER, 37, 37)],
        3.2,
    ),
    ctx(
        "heroku-api-key",
        "Heroku legacy API key (UUID next to heroku)",
        High,
        &["heroku"],
        UUID,
        3.0,
    ),
    ctx(
        "vercel-token",
        "Vercel access token (24 next to vercel)",
        High,
        &["vercel"],
        &[Run(ALNUM, 24, 24)],
        3.5,
    ),
    ctx(
        "netlify-token",
        "Netlify access token (next to netlify)",
        High,
        &["netlify"],
        &[Run(B64URL, 40, 46)],
        3.5,
    ),
    ctx(
        "okta-api-token",
        "Okta API token (00 + 40 next to okta / SSWS)",
        High,
        &["okta", "ssws"],
        &[Lit(b"00"), Run(B64URL, 40, 40)],
        3.5,
    ),
    ctx(
        "auth0-client-secret",
        "Auth0 client secret (64 next to auth0)",
        High,
        &["auth0"],
        &[Run(B64URL, 64, 64)],
        3.8,
    ),
    ctx(
        "asana-personal-access-token",
        "Asana personal access token (1/... or 2/...:32 hex next to asana)",
        High,
        &["asana"],
        &[
            Run(class(b"12"), 1, 1),
            Lit(b"/"),
            Run(class(b"0-9/"), 10, 40),
            Lit(b":"),
            Run(HEX_LOWER, 32, 32),
        ],
        3.0,
    ),
    ctx(
        "discord-bot-token",
        "Discord bot token (next to discord)",
        High,
        &["discord"],
        &[
            Run(class(b"MNO"), 1, 1),
            Run(B64URL, 23, 27),
            Lit(b"."),
            Run(B64URL, 6, 7),
            Lit(b"."),
            Run(B64URL, 27, 40),
        ],
        3.5,
    ),
    ctx(
        "discord-client-secret",
        "Discord OAuth client secret (32 next to discord)",
        High,
        &["discord"],
        &[Run(B64URL, 32, 32)],
        3.0,
    ),
    // Telegram's Bot API has one credential, the bot token.
    exclusive(ctx(
        "telegram-bot-token",
        "Telegram bot token (id:secret next to telegram)",
        High,
        &["telegram", "tg_bot", "tg-bot"],
        &[Run(DIGIT, 8, 10), Lit(b":"), Run(B64URL, 35, 35)],
        3.0,
    )),
    ctx(
        "atlassian-api-token",
        "Atlassian API token (ATATT3)",
        High,
        &["atlassian", "jira", "confluence"],
        &[Run(ALNUM, 24, 24)],
        3.5,
    ),
    ctx(
        "mailgun-api-key",
        "Mailgun API key (32 hex-8-8 next to mailgun)",
        High,
        &["mailgun"],
        &[
            Run(HEX_LOWER, 32, 32),
            Lit(b"-"),
            Run(HEX_LOWER, 8, 8),
            Lit(b"-"),
            Run(HEX_LOWER, 8, 8),
        ],
        3.0,
    ),
    ctx(
        "algolia-api-key",
        "Algolia admin or search API key (32 hex next to algolia)",
        Medium,
        &["algolia"],
        &[Run(HEX_LOWER, 32, 32)],
        3.0,
    ),
    ctx(
        "paypal-client-secret",
        "PayPal REST client secret (80 next to paypal)",
        High,
        &["paypal"],
        &[Run(B64URL, 80, 80)],
        3.8,
    ),
];

#[allow(clippy::too_many_arguments)]
const fn ctx(
    id: &'static str,
    description: &'static str,
    severity: Severity,
    keywords: &'static [&'static str],
    value: &'static [Seg],
    min_entropy: f32,
) -> ContextRule {
    ContextRule {
        id,
        description,
        severity,
        keywords,
        value,
        min_entropy,
        exclusive: false,
    }
}

const fn exclusive(mut r: ContextRule) -> ContextRule {
    r.exclusive = true;
    r
}

fn hit(
    rule: &'static str,
    severity: Severity,
    confidence: Confidence,
    start: usize,
    end: usize,
    s: &[u8],
) -> Hit {
    let example = is_documented_example(&s[start..end]);
    Hit {
        rule,
        category: Category::SECRET,
        severity: if example { Severity::Info } else { severity },
        confidence,
        start,
        end,
        example,
        priority: 0,
    }
}

/// Runs a token rule whose prefix the prefilter found at `at`.
pub(crate) fn token_match(rule: &TokenRule, s: &[u8], at: usize) -> Option<Hit> {
    let prefix = rule
        .prefixes
        .iter()
        .find(|p| s[at..].starts_with(p.as_bytes()))?;
    if rule.left_stop != 0 && at > 0 && in_class(rule.left_stop, s[at - 1]) {
        return None;
    }
    let body_start = at + prefix.len();
    let stop = match rule.body.last() {
        Some(Seg::Run(c, _, _)) => *c,
        _ => ALNUM,
    };
    let end = match_at(rule.body, s, body_start, stop)?;
    let body = &s[body_start..end];
    if is_placeholder(body) && !is_documented_example(&s[at..end]) {
        return None;
    }
    if crate::validate::entropy(body) < rule.min_entropy && !is_documented_example(&s[at..end]) {
        return None;
    }
    let confidence = match rule.check {
        Check::None => Confidence::Medium,
        Check::Crc32Base62 => {
            if crate::validate::crc32_base62_ok(body) {
                Confidence::High
            } else {
                Confidence::Medium
            }
        }
        Check::Bech32 => {
            if crate::validate::bech32_ok(&s[at..end]) {
                Confidence::High
            } else {
                return None;
            }
        }
        Check::Base64Json => {
            let head = &body[..body.len().min(16) / 4 * 4];
            match b64_decode(head) {
                Some(d) if d.starts_with(b"{\"") => Confidence::High,
                _ => return None,
            }
        }
        Check::Crc32Hex8 => {
            let (main, check) = s[at..end].split_at(end - at - 8);
            let main_no_us = &main[..main.len() - 1];
            let want = format!("{:08x}", crc32fast::hash(main_no_us));
            let want_body = format!("{:08x}", crc32fast::hash(&main_no_us[prefix.len()..]));
            if check == want.as_bytes() || check == want_body.as_bytes() {
                Confidence::High
            } else {
                Confidence::Medium
            }
        }
        Check::BedrockPresigned => {
            let head = &body[..body.len().min(64) / 4 * 4];
            match b64_decode(head) {
                Some(d) if d.starts_with(b"bedrock.amazonaws.com") => Confidence::High,
                _ => return None,
            }
        }
        Check::OpenAiMarker => {
            if memchr::memmem::find(body, b"T3BlbkFJ").is_some() {
                Confidence::High
            } else {
                Confidence::Medium
            }
        }
    };
    Some(hit(rule.id, rule.severity, confidence, at, end, s))
}

/// Runs the custom rule(s) behind `anchor` found at `at`.
pub(crate) fn custom_match(anchor: &str, s: &[u8], at: usize, out: &mut Vec<Hit>) {
    let h = match anchor {
        "-----BEGIN " => pem_block(s, at),
        "PuTTY-User-Key-File-" => putty(s, at),
        "eyJ" => jwt(s, at),
        "://" => url_credentials(s, at),
        "AccountKey=" => azure_account_key(s, at),
        "sig=" => azure_sas(s, at),
        "Q~" => azure_ad_secret(s, at),
        "AZDO" => azure_devops(s, at),
        "T3BlbkFJ" => openai_legacy(s, at),
        "-us" => mailchimp(s, at),
        "NRAL" => newrelic_license(s, at),
        ":AA" => telegram_structural(s, at),
        "|" => facebook_app_token(s, at),
        _ => None,
    };
    if let Some(h) = h {
        out.push(h);
    }
}

fn count_in(s: &[u8], c: crate::spec::Class) -> usize {
    s.iter().filter(|&&b| in_class(c, b)).count()
}

fn pem_block(s: &[u8], at: usize) -> Option<Hit> {
    if !s[at..].starts_with(b"-----BEGIN ") {
        return None;
    }
    let after = at + "-----BEGIN ".len();
    let label_end = after + memchr::memmem::find(&s[after..s.len().min(after + 64)], b"-----")?;
    let label = &s[after..label_end];
    let kind = match label {
        b"PRIVATE KEY" | b"RSA PRIVATE KEY" | b"EC PRIVATE KEY" | b"DSA PRIVATE KEY" => {
            "private-key"
        }
        b"ENCRYPTED PRIVATE KEY" => "encrypted-private-key",
        b"OPENSSH PRIVATE KEY" => "openssh-private-key",
        b"PGP PRIVATE KEY BLOCK" => "pgp-private-key-block",
        _ => return None,
    };
    let body_start = label_end + 5;
    let (body_end, end) = match memchr::memmem::find(&s[body_start..], b"-----END ") {
        Some(p) => {
            let e = body_start + p;
            let close = memchr::memmem::find(&s[e + 9..], b"-----")
                .map(|q| e + 9 + q + 5)
                .unwrap_or(s.len());
            (e, close)
        }
        None => (s.len(), s.len()),
    };
    let body = &s[body_start..body_end];
    // Header lines (Proc-Type, DEK-Info, Version, Comment) do not count as key material.
    let mut material = 0;
    let mut encrypted = kind == "encrypted-private-key";
    for line in body.split(|&b| b == b'\n') {
        if line.contains(&b':') {
            if memchr::memmem::find(line, b"ENCRYPTED").is_some() {
                encrypted = true;
            }
            continue;
        }
        material += count_in(line, B64_PAD);
    }
    if material < 40 || crate::validate::entropy(body) < 3.5 {
        return None;
    }
    let rule = if encrypted && kind == "private-key" {
        "encrypted-private-key"
    } else {
        kind
    };
    let sev = if rule == "encrypted-private-key" {
        High
    } else {
        Critical
    };
    Some(hit(rule, sev, Confidence::High, at, end, s))
}

fn putty(s: &[u8], at: usize) -> Option<Hit> {
    let rest = &s[at..];
    if !rest.starts_with(b"PuTTY-User-Key-File-") {
        return None;
    }
    let p = memchr::memmem::find(rest, b"Private-Lines:")?;
    let mut end = at + p;
    // Through the private lines and the MAC line, or the end of the string.
    end = match memchr::memmem::find(&s[end..], b"Private-MAC:") {
        Some(q) => {
            let m = end + q;
            memchr::memchr(b'\n', &s[m..])
                .map(|n| m + n)
                .unwrap_or(s.len())
        }
        None => s.len(),
    };
    Some(hit(
        "putty-private-key",
        Critical,
        Confidence::High,
        at,
        end,
        s,
    ))
}

fn jwt(s: &[u8], at: usize) -> Option<Hit> {
    if !s[at..].starts_with(b"eyJ") || (at > 0 && in_class(B64URL, s[at - 1])) {
        return None;
    }
    let seg = |from: usize| -> usize {
        let mut e = from;
        while e < s.len() && in_class(B64URL, s[e]) {
            e += 1;
        }
        e
    };
    let h_end = seg(at);
    if h_end >= s.len() || s[h_end] != b'.' || h_end - at < 10 {
        return None;
    }
    let header = b64_decode(&s[at..h_end])?;
    let header = std::str::from_utf8(&header).ok()?;
    let trimmed = header.trim();
    if !trimmed.starts_with('{') || !trimmed.contains("\"alg\"") {
        return None;
    }
    let p_end = seg(h_end + 1);
    if p_end - (h_end + 1) < 4 {
        return None;
    }
    let mut end = p_end;
    if p_end < s.len() && s[p_end] == b'.' {
        end = seg(p_end + 1);
    } else if !trimmed.contains("\"none\"") {
        // A signed JWT always has three parts; only alg "none" may end after the payload.
        return None;
    }
    Some(hit("jwt", High, Confidence::High, at, end, s))
}

const DB_SCHEMES: &[&[u8]] = &[
    b"postgres",
    b"postgresql",
    b"mysql",
    b"mariadb",
    b"mongodb",
    b"mongodb+srv",
    b"mssql",
    b"sqlserver",
    b"oracle",
    b"snowflake",
    b"clickhouse",
    b"cockroachdb",
    b"redshift",
    b"db2",
    b"couchdb",
    b"neo4j",
    b"neo4j+s",
    b"cassandra",
    b"jdbc:postgresql",
    b"jdbc:mysql",
    b"jdbc:sqlserver",
    b"jdbc:oracle",
];
const BROKER_SCHEMES: &[&[u8]] = &[
    b"redis",
    b"rediss",
    b"amqp",
    b"amqps",
    b"nats",
    b"mqtt",
    b"mqtts",
    b"kafka",
    b"memcached",
    b"stomp",
];
const WEB_SCHEMES: &[&[u8]] = &[
    b"http", b"https", b"ftp", b"ftps", b"sftp", b"ssh", b"git", b"svn", b"ldap", b"ldaps",
    b"smtp", b"smtps", b"imap", b"imaps",
];

/// Passwords that are placeholders in connection-string examples.
fn is_placeholder_password(p: &[u8]) -> bool {
    let l: Vec<u8> = p.iter().map(|c| c.to_ascii_lowercase()).collect();
    const WORDS: &[&[u8]] = &[
        b"password",
        b"pass",
        b"passwd",
        b"pwd",
        b"secret",
        b"pw",
        b"changeme",
        b"user",
        b"username",
        b"admin",
        b"root",
        b"postgres",
        b"mysql",
        b"example",
        b"test",
        b"guest",
        b"redis",
        b"rabbitmq",
        b"mypassword",
        b"yourpassword",
        b"your_password",
        b"dbpassword",
        b"db_password",
    ];
    WORDS.contains(&l.as_slice())
        || p.starts_with(b"$")
        || p.starts_with(b"%")
        || p.starts_with(b"<")
        || p.starts_with(b"{")
        || p.starts_with(b"[")
        || is_placeholder(p)
}

fn url_credentials(s: &[u8], at: usize) -> Option<Hit> {
    // Scheme: letters, digits, + : before "://".
    let mut st = at;
    while st > 0 && (s[st - 1].is_ascii_alphanumeric() || s[st - 1] == b'+' || s[st - 1] == b':') {
        st -= 1;
    }
    let scheme: Vec<u8> = s[st..at].iter().map(|c| c.to_ascii_lowercase()).collect();
    let (rule, sev) = if DB_SCHEMES.contains(&scheme.as_slice()) {
        ("database-url-credentials", Critical)
    } else if BROKER_SCHEMES.contains(&scheme.as_slice()) {
        ("broker-url-credentials", Critical)
    } else if WEB_SCHEMES.contains(&scheme.as_slice()) {
        ("url-credentials", High)
    } else {
        return None;
    };
    let ui_start = at + 3;
    // The authority ends at the first '/', '?', '#', whitespace or quote.
    let mut auth_end = ui_start;
    while auth_end < s.len()
        && !matches!(
            s[auth_end],
            b'/' | b'?'
                | b'#'
                | b' '
                | b'\t'
                | b'\n'
                | b'\r'
                | b'"'
                | b'\''
                | b'`'
                | b'>'
                | b'<'
                | b'\\'
        )
    {
        auth_end += 1;
    }
    let authority = &s[ui_start..auth_end];
    let at_pos = authority.iter().rposition(|&c| c == b'@')?;
    let userinfo = &authority[..at_pos];
    let colon = userinfo.iter().position(|&c| c == b':')?;
    let password = &userinfo[colon + 1..];
    if password.is_empty() || is_placeholder_password(password) || at_pos + 1 >= authority.len() {
        return None;
    }
    if rule == "url-credentials" && (password.len() < 6 || crate::validate::entropy(password) < 2.5)
    {
        return None;
    }
    Some(hit(
        rule,
        sev,
        Confidence::High,
        ui_start,
        ui_start + at_pos,
        s,
    ))
}

fn azure_account_key(s: &[u8], at: usize) -> Option<Hit> {
    let start = at + "AccountKey=".len();
    if !s[at..].starts_with(b"AccountKey=") {
        return None;
    }
    let end = match_at(&[Run(B64, 86, 86), Lit(b"==")], s, start, B64_PAD)?;
    Some(hit(
        "azure-storage-account-key",
        Critical,
        Confidence::High,
        start,
        end,
        s,
    ))
}

fn azure_sas(s: &[u8], at: usize) -> Option<Hit> {
    if at > 0 && s[at - 1].is_ascii_alphanumeric() {
        return None;
    }
    let window = &s[at.saturating_sub(400)..at];
    // A signature without the service version is not a SAS token.
    memchr::memmem::find(window, b"sv=")?;
    let start = at + 4;
    let mut end = start;
    while end < s.len() && in_class(class(b"A-Za-z0-9%+/="), s[end]) {
        end += 1;
    }
    let v = &s[start..end];
    if !(30..=120).contains(&v.len()) || crate::validate::entropy(v) < 3.5 {
        return None;
    }
    Some(hit(
        "azure-sas-token",
        High,
        Confidence::Medium,
        start,
        end,
        s,
    ))
}

fn azure_ad_secret(s: &[u8], at: usize) -> Option<Hit> {
    // xxx + digit + Q~ + 31..34: the "Q~" is the documented version marker at offset 4.
    if at < 4 || !s[at..].starts_with(b"Q~") {
        return None;
    }
    let start = at - 4;
    let cls = class(b"A-Za-z0-9_~.");
    if !s[start..at - 1].iter().all(|&b| in_class(cls, b)) || !s[at - 1].is_ascii_digit() {
        return None;
    }
    if start > 0 && in_class(class(b"A-Za-z0-9_~.-"), s[start - 1]) {
        return None;
    }
    let end = match_at(
        &[Run(class(b"A-Za-z0-9_~.-"), 31, 34)],
        s,
        at + 2,
        class(b"A-Za-z0-9_~.-"),
    )?;
    if crate::validate::entropy(&s[at + 2..end]) < 3.5 {
        return None;
    }
    Some(hit(
        "azure-ad-client-secret",
        Critical,
        Confidence::High,
        start,
        end,
        s,
    ))
}

fn azure_devops(s: &[u8], at: usize) -> Option<Hit> {
    // New-format Azure DevOps PATs: 84 characters with the "AZDO" signature at offset 76.
    if at < 76 || at + 8 > s.len() {
        return None;
    }
    let start = at - 76;
    let end = at + 8;
    let tok = &s[start..end];
    if !tok.iter().all(|&b| in_class(ALNUM, b)) || &tok[76..80] != b"AZDO" {
        return None;
    }
    if (start > 0 && in_class(ALNUM, s[start - 1])) || (end < s.len() && in_class(ALNUM, s[end])) {
        return None;
    }
    Some(hit(
        "azure-devops-pat",
        High,
        Confidence::High,
        start,
        end,
        s,
    ))
}

fn openai_legacy(s: &[u8], at: usize) -> Option<Hit> {
    // Legacy and project keys: sk- ... T3BlbkFJ ... ; the prefixed forms are token rules.
    let window_start = at.saturating_sub(200);
    let sk = memchr::memmem::rfind(&s[window_start..at], b"sk-")? + window_start;
    if sk > 0 && in_class(B64URL, s[sk - 1]) {
        return None;
    }
    if !s[sk + 3..at].iter().all(|&b| in_class(B64URL, b)) || at - (sk + 3) < 20 {
        return None;
    }
    // Prefixed forms are reported by the token rule.
    for p in ["sk-proj-", "sk-svcacct-", "sk-admin-", "sk-None-"] {
        if s[sk..].starts_with(p.as_bytes()) {
            return None;
        }
    }
    let mut end = at + 8;
    while end < s.len() && in_class(B64URL, s[end]) {
        end += 1;
    }
    if end - (at + 8) < 20 {
        return None;
    }
    Some(hit(
        "openai-api-key",
        Critical,
        Confidence::High,
        sk,
        end,
        s,
    ))
}

fn mailchimp(s: &[u8], at: usize) -> Option<Hit> {
    if at < 32 || !s[at..].starts_with(b"-us") {
        return None;
    }
    let start = at - 32;
    if !s[start..at].iter().all(|&b| in_class(HEX_LOWER, b))
        || (start > 0 && in_class(ALNUM, s[start - 1]))
    {
        return None;
    }
    let end = match_at(&[Run(DIGIT, 1, 2)], s, at + 3, ALNUM)?;
    if crate::validate::entropy(&s[start..at]) < 3.0 {
        return None;
    }
    Some(hit(
        "mailchimp-api-key",
        High,
        Confidence::Medium,
        start,
        end,
        s,
    ))
}

fn newrelic_license(s: &[u8], at: usize) -> Option<Hit> {
    if at < 36 || !s[at..].starts_with(b"NRAL") {
        return None;
    }
    let start = at - 36;
    if !s[start..at].iter().all(|&b| in_class(HEX_LOWER, b))
        || (start > 0 && in_class(ALNUM, s[start - 1]))
    {
        return None;
    }
    let end = at + 4;
    if end < s.len() && in_class(ALNUM, s[end]) {
        return None;
    }
    Some(hit(
        "newrelic-license-key",
        High,
        Confidence::High,
        start,
        end,
        s,
    ))
}

fn facebook_app_token(s: &[u8], at: usize) -> Option<Hit> {
    // App access tokens are `{app-id}|{app-secret or token}` (Graph API documentation).
    let mut st = at;
    while st > 0 && s[st - 1].is_ascii_digit() {
        st -= 1;
    }
    if !(15..=16).contains(&(at - st)) || (st > 0 && in_class(ALNUM, s[st - 1])) {
        return None;
    }
    let end = match_at(&[Run(B64URL, 27, 32)], s, at + 1, B64URL)?;
    if crate::validate::entropy(&s[at + 1..end]) < 3.5 || is_placeholder(&s[at + 1..end]) {
        return None;
    }
    Some(hit(
        "facebook-access-token",
        High,
        Confidence::Medium,
        st,
        end,
        s,
    ))
}

fn telegram_structural(s: &[u8], at: usize) -> Option<Hit> {
    // <bot id>:AA<33>; Bot API secrets start with "AA".
    if !s[at..].starts_with(b":AA") {
        return None;
    }
    let mut st = at;
    while st > 0 && s[st - 1].is_ascii_digit() {
        st -= 1;
    }
    if !(8..=10).contains(&(at - st)) || (st > 0 && in_class(ALNUM, s[st - 1])) {
        return None;
    }
    let end = match_at(&[Run(B64URL, 35, 35)], s, at + 1, B64URL)?;
    if crate::validate::entropy(&s[at + 1..end]) < 3.5 {
        return None;
    }
    Some(hit(
        "telegram-bot-token",
        High,
        Confidence::Medium,
        st,
        end,
        s,
    ))
}

/// Tries the provider context rules for an assignment `ident = value`, where `window` is the
/// identifier plus what precedes it (lower-cased). Returns the first rule whose keyword is in
/// the window and whose format the whole value matches.
/// What the provider rules say about an assignment.
pub(crate) enum ContextVerdict {
    /// A provider format matched.
    Match(&'static ContextRule),
    /// An exclusive provider is named and its format did not match: not a credential.
    NotCredential,
    /// No provider rule applies.
    None,
}

pub(crate) fn context_match(window: &[u8], value: &[u8]) -> ContextVerdict {
    let words = WordStarts::new(window);
    let mut named_exclusive = false;
    for r in CONTEXT_RULES {
        if !r.keywords.iter().any(|k| words.starts_with(k.as_bytes())) {
            continue;
        }
        named_exclusive |= r.exclusive;
        if match_at(r.value, value, 0, 0) != Some(value.len()) {
            continue;
        }
        let example = is_documented_example(value);
        if !example && (is_placeholder(value) || crate::validate::entropy(value) < r.min_entropy) {
            continue;
        }
        return ContextVerdict::Match(r);
    }
    if named_exclusive {
        ContextVerdict::NotCredential
    } else {
        ContextVerdict::None
    }
}

/// Where words start in a window (after a non-letter, or at a camelCase boundary:
/// `twilioAuthToken`, `TWILIO_AUTH`, `myTwilio`), so that a provider keyword is found only
/// there (`okta` is not in `rookTable`). Found once per window for all the rules' keywords:
/// a search of the window per keyword cost a third of the scan of a long string of letters
/// (measured), where a window has few word starts.
struct WordStarts {
    lower: Vec<u8>,
    starts: Vec<usize>,
    /// Bit `b & 63` for the lower-cased first byte `b` of each word.
    heads: u64,
}

impl WordStarts {
    fn new(window: &[u8]) -> WordStarts {
        let lower: Vec<u8> = window.iter().map(|c| c.to_ascii_lowercase()).collect();
        let mut starts = Vec::new();
        let mut heads = 0u64;
        for at in 0..window.len() {
            let word_start = at == 0
                || !window[at - 1].is_ascii_alphabetic()
                || (window[at].is_ascii_uppercase() && window[at - 1].is_ascii_lowercase());
            if word_start {
                starts.push(at);
                heads |= 1 << (lower[at] & 63);
            }
        }
        WordStarts {
            lower,
            starts,
            heads,
        }
    }

    /// Whether `kw` (lower case) occurs where a word starts.
    fn starts_with(&self, kw: &[u8]) -> bool {
        let Some(&head) = kw.first() else {
            return true;
        };
        self.heads & (1 << (head & 63)) != 0
            && self
                .starts
                .iter()
                .any(|&at| self.lower[at] == head && self.lower[at..].starts_with(kw))
    }
}

/// All lower-case keywords of the context rules (for the prefilter).
pub(crate) fn context_keywords() -> impl Iterator<Item = &'static str> {
    CONTEXT_RULES
        .iter()
        .flat_map(|r| r.keywords.iter().copied())
}
