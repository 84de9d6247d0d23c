//! Receptive fields panel: pick a latent site of a level (click, or arrow
//! keys) and see which pixels respond to it, and how strongly.

use std::cell::Cell;
use std::rc::Rc;

use web_sys::{Event, HtmlCanvasElement, HtmlSelectElement, KeyboardEvent, MouseEvent};

use super::live::Live;
use super::{App, canvas_pixel, draw_field, draw_image, ms, now, on, report};
use crate::error::Result;

pub fn init(app: &Rc<App>) -> Result<Rc<Live>> {
    let levels = app.engine.levels();
    let size = app.engine.config().image_size;
    let channels = app.engine.config().channels;
    let site_level = app.engine.lattice().site_level.clone();
    let elements = &app.page.receptive;
    let select = &elements.level;
    select.set_inner_html("");
    for l in 0..levels {
        let label = if l == 0 {
            " (finest)"
        } else if l + 1 == levels {
            " (coarsest)"
        } else {
            ""
        };
        select.insert_adjacent_html("beforeend", &format!("<option value={l}>level {l}{label}</option>")).ok();
    }
    let level_of = |select: &HtmlSelectElement| select.value().parse::<usize>().unwrap_or(0);
    // The chosen site; starts at the first site of level 0.
    let site = Rc::new(Cell::new(site_level.iter().position(|&l| l == 0).unwrap_or(0)));
    let live = Live::new();
    {
        let (a, site, site_level) = (app.clone(), site.clone(), site_level.clone());
        live.set(move || {
            let (a, site, site_level) = (a.clone(), site.clone(), site_level.clone());
            async move {
                let result = async {
                    let face = a.picked();
                    let elements = &a.page.receptive;
                    let level = level_of(&elements.level);
                    if site_level[site.get()] != level {
                        site.set(site_level.iter().position(|&l| l == level).unwrap_or(0));
                    }
                    let channel = level_of(&elements.channel);
                    draw_image(&elements.face, &face.x01, channels, size);
                    draw_sites(&elements.sites, &site_level, level, site.get(), size);
                    let t = now();
                    let field = a.engine.receptive_field(&face, site.get(), channel).await?;
                    draw_field(&elements.field, &field, channels, size);
                    let support =
                        (0..size * size).filter(|&p| (0..channels).any(|c| field[c * size * size + p] != 0.0)).count();
                    Ok(format!(
                        "Latent at row {}, column {} (level {level}) moves {support} of {} pixels; {} on {}",
                        site.get() / size,
                        site.get() % size,
                        size * size,
                        ms(now() - t),
                        a.backend_label()
                    ))
                }
                .await;
                report(&a.page.receptive.status, result);
            }
        });
    }
    for target in [&elements.level, &elements.channel] {
        let l = live.clone();
        on(target, "input", move |_: Event| l.trigger());
    }
    // Click on the face or the site map: the nearest site of the level.
    for canvas in [&elements.face, &elements.sites] {
        let (cv, chosen, levels_of_sites, l) = (canvas.clone(), site.clone(), site_level.clone(), live.clone());
        let level_select = elements.level.clone();
        on(canvas, "click", move |e: MouseEvent| {
            let Some((x, y)) = canvas_pixel(&cv, e.client_x() as f64, e.client_y() as f64) else { return };
            let level = level_of(&level_select);
            let nearest = (0..size * size)
                .filter(|&s| levels_of_sites[s] == level)
                .min_by_key(|&s| (s / size).abs_diff(y).pow(2) + (s % size).abs_diff(x).pow(2));
            if let Some(s) = nearest {
                chosen.set(s);
                l.trigger();
            }
        });
        // Arrow keys step to the next site of the level in that direction.
        let (chosen, levels_of_sites, l) = (site.clone(), site_level.clone(), live.clone());
        let level_select = elements.level.clone();
        on(canvas, "keydown", move |e: KeyboardEvent| {
            let (dr, dc): (isize, isize) = match e.key().as_str() {
                "ArrowUp" => (-1, 0),
                "ArrowDown" => (1, 0),
                "ArrowLeft" => (0, -1),
                "ArrowRight" => (0, 1),
                _ => return,
            };
            e.prevent_default();
            let level = level_of(&level_select);
            let (mut r, mut c) = ((chosen.get() / size) as isize, (chosen.get() % size) as isize);
            for _ in 0..size {
                r = (r + dr).rem_euclid(size as isize);
                c = (c + dc).rem_euclid(size as isize);
                let s = r as usize * size + c as usize;
                if levels_of_sites[s] == level {
                    chosen.set(s);
                    l.trigger();
                    return;
                }
            }
        });
    }
    Ok(live)
}

/// The latent sites of `level` (grey), the chosen one (red), others white.
fn draw_sites(canvas: &HtmlCanvasElement, site_level: &[usize], level: usize, chosen: usize, size: usize) {
    let plane = size * size;
    let mut img = vec![1.0f32; 3 * plane];
    for s in 0..plane {
        let rgb = if s == chosen {
            [0.85, 0.1, 0.1]
        } else if site_level[s] == level {
            [0.55, 0.55, 0.55]
        } else {
            [0.95, 0.95, 0.95]
        };
        for c in 0..3 {
            img[c * plane + s] = rgb[c];
        }
    }
    draw_image(canvas, &img, 3, size);
}
