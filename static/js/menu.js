// The layout's menus (templates/base.html): each is a <details class="dropdown">, which opens
// and closes without JavaScript. This adds what a menu is expected to do beyond that: one open
// at a time, closed by a click elsewhere or by Escape (focus back on its button).
const menus = [...document.querySelectorAll('details.dropdown')];

function closeAll(except) {
  for (const menu of menus) if (menu !== except) menu.open = false;
}

for (const menu of menus) {
  menu.addEventListener('toggle', () => {
    if (menu.open) closeAll(menu);
  });
}

document.addEventListener('click', (event) => {
  if (!menus.some((menu) => menu.contains(event.target))) closeAll(null);
});

document.addEventListener('keydown', (event) => {
  if (event.key !== 'Escape') return;
  const open = menus.find((menu) => menu.open);
  if (!open) return;
  open.open = false;
  open.querySelector('summary')?.focus();
});
